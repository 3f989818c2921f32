//! The library side of the `hraftd` package: what the integration tests (`tests/it`) and
//! `hraftd-torture` share. The server itself is the `hraftd` binary (`main.rs`) over the
//! `hraftd-store` and `hraftd-httpd` crates; clients use `hraftd-client`.

pub mod harness;
