//! `elton update`: moves a mount with uncommitted changes onto the volume's
//! head by a three-way merge per path (the mounted version, the head, the
//! upper layer), keeping both sides of every conflict.
//!
//! - [`plan`]: the decision for one path (pure, unit-tested);
//! - [`survey`]: walks the upper beside both versions' manifests into a
//!   [`survey::MergePlan`];
//! - [`apply`]: carries the plan out on the upper;
//! - [`journal`]: `update.json`, which makes a crash in the middle finish
//!   the update at the next start.

pub mod apply;
pub mod journal;
pub mod plan;
pub mod survey;

pub use journal::UpdateJournal;
pub use survey::{Conflict, MergePlan};

#[cfg(test)]
mod tests;
