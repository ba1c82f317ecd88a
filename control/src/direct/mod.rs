//! The direct read path: a read-only action (k2i's `ps`) is not a state
//! change, so it does not go through the Raft log. The member a client
//! asks runs it on its own host and asks the other hosts named over its
//! member connections (mutually authenticated), each within the query's
//! deadline; hosts that do not answer in time are listed as missing.
//! [`select`] is the pure part (checking a query, choosing the hosts,
//! assembling the answer); [`fanout`] does the calls; [`state_read`]
//! answers reads of the replicated state (FastContainer's apps and
//! instance registry) from the leader without a log entry.

pub mod fanout;
pub mod select;
pub mod state_read;

pub use select::{DirectResult, HostSelection};
