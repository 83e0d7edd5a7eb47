//! fogcore's integration tests, one file per area, in one test binary (one link instead of ten):
//! `cargo test -p fogcore --test it control::` runs one area.

mod agent;
mod control;
mod dhcp;
mod http;
mod imaging;
mod node;
mod replicate;
mod serve;
mod tftp;
mod tools;
mod wake;
