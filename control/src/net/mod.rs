//! The control plane's network edge: gRPC services a member serves
//! ([`raft_service`], [`control_service`]) and the client side
//! ([`network`] for openraft, [`pool`] for every call to another member).

pub mod codec;
pub mod control_service;
pub mod network;
pub mod pool;
pub mod raft_service;
pub mod tls;
