//! k2i: process information of a host, read from `/proc` and filtered in
//! memory. [`query`] holds the pure part (what a query is, which processes
//! match, how a host's answer is bounded); [`table`] decides what a
//! listing must read again; [`procs`] reads `/proc`.

pub mod answer;
pub mod passwd;
pub mod proc_dir;
pub mod procs;
pub mod query;
pub mod table;

pub use query::{HostProcs, ProcInfo, ProcQuery};
