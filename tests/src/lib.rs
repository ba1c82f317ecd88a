//! Test harness pieces shared by the end-to-end tests and the benchmark
//! scripts. [`link`]: a user-space WAN link (TCP proxy) on loopback.

pub mod link;
