//! Test harness pieces shared by the end-to-end tests and the benchmark
//! scripts. [`link`]: a user-space WAN link (TCP proxy) on loopback.
//! [`linearizability`]: records register histories against the control group
//! and checks them with stateright's linearizability tester.

pub mod linearizability;
pub mod link;
pub mod raftbench;
