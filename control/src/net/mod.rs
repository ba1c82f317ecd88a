//! The control plane's network edge: gRPC services a member serves
//! ([`raft_service`], [`control_service`]) and the client side
//! ([`network`] for openraft, [`pool`] for every call to another member).
//! Over TLS, a call is answered only by the member dialled: [`expected`]
//! decides (pure), [`verifier`] enforces it in the handshake, [`probe`]
//! checks an address before a member is added.

pub mod codec;
pub mod control_service;
pub mod expected;
pub mod network;
pub mod peer_versions;
pub mod pool;
pub mod probe;
pub mod raft_service;
pub mod tls;
pub mod verifier;
