//! hraftd's integration tests: real `hraftd` processes on loopback, one module per
//! behaviour, all in one test binary (one build and link, one shared port registry).
//! The cluster helpers are in `common`, over the process harness in `src/harness.rs`.

mod common;

mod auth;
mod client;
mod cluster;
mod durability;
mod failover;
mod forward;
mod groups;
mod hardening;
mod hraftctl;
mod join;
mod keyapi;
mod lease;
mod membership;
mod operations;
mod readme;
mod security;
mod single_node;
mod tls;
mod watch;
