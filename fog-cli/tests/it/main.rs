//! The `fog` binary's integration tests, in one test binary.

mod cluster;
mod image_master;
mod layout;
#[path = "../../../fogcore/tests/it/tools/mod.rs"]
mod tools;
