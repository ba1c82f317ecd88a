//! FastContainer: web applications that start on their first request and
//! run from Elton volumes (DESIGN.md §6, `docs/architecture.md`
//! "FastContainer").
//!
//! What is built so far is the configuration DB in the replicated state:
//! [`spec`] is what an app is and how each field is checked, [`parse`]
//! reads the CLI's notations (`web@3`, `30%`), [`config`] is the pure
//! logic that creates, changes and removes apps against the apps already
//! there (unique names and host names), [`scale`] is the pure scaling
//! rule (scale out, scale up, cooldown; run by each host's proxy),
//! [`fleet`] the instance registry and per-host assignments,
//! [`reconcile`] the leader's reconciler's planner. `state::apply` calls
//! [`config`] and [`fleet`]; nothing here does IO (the reconciler's loop
//! is `crate::app_reconciler`). The proxy that runs apps is
//! `eltonfs/src/proxy/`.

pub mod config;
pub mod fleet;
pub mod parse;
pub mod reconcile;
pub mod scale;
pub mod spec;

pub use spec::{App, AppPatch, AppSpec};
