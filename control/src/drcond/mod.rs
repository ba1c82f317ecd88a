//! drcond: CPU, memory and IO limits on processes of every host, as
//! desired state in the replicated state machine. [`spec`] is what a limit
//! is and how it is checked, [`parse`] reads the CLI's `30%`, `512M`,
//! `8:0`, [`plan`] is the pure reconcile planner (desired limits and what a
//! host has → the steps that make the host match), [`fit`] whether a
//! limit fits the hosts' cores, [`status`] what a host reports about its
//! limits; [`host`] carries the steps out on cgroups
//! (see `docs/architecture.md`, "drcond").

pub mod files;
pub mod fit;
pub mod fit_check;
pub mod host;
pub mod parse;
pub mod plan;
pub mod report;
pub mod spec;
pub mod status;

pub use spec::{Limit, LimitSpec, Resources, Selector};
