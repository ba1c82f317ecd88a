//! Who may talk to an Elton master, and how that is proven.
//!
//! - [`pki`]: a cluster's certificate authority, the node certificates it
//!   issues, and the TLS directory they live in.
//! - [`identity`]: what a verified client certificate says (node, cluster,
//!   role) and which trusted CA issued it.
//! - [`tls`]: tonic TLS settings for masters, nodes and the CLI.
//! - [`token`]: bearer tokens with scopes, for clients without a certificate.
//! - [`error`]: one error type.
//!
//! Each cluster has its own CA. A certificate names its node (CN), its
//! cluster (O) and its role (OU); peers pin each other's CA, so a cluster
//! can only ever speak for itself. See `docs/architecture.md` §Security.

pub mod error;
pub mod identity;
pub mod pki;
pub mod tls;
pub mod token;

pub use error::TrustError;
pub use identity::{Authenticated, CertIdentity, TrustAnchors};
pub use pki::{ClusterCa, NodeCredentials, Role, TlsDir};
pub use token::{BearerAuth, Scope};
