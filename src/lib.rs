//! The library side of the `hraftd` package: what the integration tests (`tests/it`) and
//! `hraftd-torture` share, and the client options of `hraftctl` and `hraftd load`. The server itself is the `hraftd` binary (`main.rs`) over the
//! `hraftd-store` and `hraftd-httpd` crates; clients use `hraftd-client`.

pub mod client_opts;
pub mod harness;
