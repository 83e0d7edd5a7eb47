//! fogcore's integration tests, one file per area, in one test binary (one link instead of ten):
//! `cargo test -p fogcore --test it control::` runs one area.

mod agent;
mod control;
mod dhcp;
mod filesystems;
mod http;
mod imaging;
mod multicast;
mod node;
mod replicate;
mod resize;
mod serve;
mod tftp;
mod tools;
mod wake;
mod web;

/// An HTTP client for tests: fog's TLS provider installed, as every client fog builds has it.
pub fn http_client() -> reqwest::Client {
    fogcore::net::tls::http_client_builder()
        .build()
        .expect("an HTTP client builds")
}
