//! The host's last reconcile report, kept for the direct query
//! [`crate::Action::LimitStatus`] (`elton limit ls`). Process-wide: a
//! process runs one control member, so one host.

use std::sync::Mutex;

use super::status::HostLimits;

static LAST: Mutex<Option<HostLimits>> = Mutex::new(None);

/// Records a pass's report (or why drcond is off here).
pub fn set(report: HostLimits) {
    *LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report);
}

/// The last report; before the first pass, every limit is pending.
pub fn last() -> HostLimits {
    LAST.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}
