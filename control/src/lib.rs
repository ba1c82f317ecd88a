//! The control plane (k2i, drcond, container scheduling replicated by Raft)
//! comes after the storage system; see `docs/architecture.md`. This crate is
//! an empty placeholder so the workspace layout is stable.
