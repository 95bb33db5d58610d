//! kube-proxy's bounded-frequency runner, as a pure function of the loop's state: when is the
//! next sync due?

use std::time::{Duration, Instant};

/// What decides the next sync time.
#[derive(Clone, Copy, Debug)]
pub struct RunnerState {
    /// The lists of Services and EndpointSlices are complete (no sync before).
    pub ready: bool,
    /// When the last sync started (None: never).
    pub last_sync: Option<Instant>,
    /// Changes wait, or a full sync is needed.
    pub pending: bool,
    /// The last sync failed.
    pub failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundedFrequency {
    /// `--min-sync-period`: syncs never come closer together than this.
    pub min: Duration,
    /// `--sync-period`: a sync happens at least this often (drift checks, periodic repair).
    pub max: Duration,
}

/// A failed sync is retried no sooner than this, even with a zero min-sync-period.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl BoundedFrequency {
    /// When the next sync is due; None while the lists are incomplete.
    pub fn due(&self, s: RunnerState) -> Option<Instant> {
        if !s.ready {
            return None;
        }
        let Some(last) = s.last_sync else {
            return Some(Instant::now());
        };
        Some(if s.failed {
            last + self.min.max(RETRY_AFTER_FAILURE)
        } else if s.pending {
            last + self.min
        } else {
            last + self.max
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: BoundedFrequency = BoundedFrequency { min: Duration::from_secs(1), max: Duration::from_secs(30) };

    fn state(last: Option<Instant>, pending: bool, failed: bool) -> RunnerState {
        RunnerState { ready: true, last_sync: last, pending, failed }
    }

    #[test]
    fn nothing_before_the_lists_are_complete() {
        assert_eq!(R.due(RunnerState { ready: false, ..state(None, true, false) }), None);
    }

    #[test]
    fn first_sync_at_once_then_min_apart_for_changes_and_max_apart_otherwise() {
        let before = Instant::now();
        assert!(R.due(state(None, false, false)).unwrap() >= before);
        let t0 = Instant::now();
        assert_eq!(R.due(state(Some(t0), true, false)), Some(t0 + Duration::from_secs(1)));
        assert_eq!(R.due(state(Some(t0), false, false)), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn failures_retry_no_sooner_than_a_second() {
        let t0 = Instant::now();
        let zero_min = BoundedFrequency { min: Duration::ZERO, ..R };
        assert_eq!(zero_min.due(state(Some(t0), true, true)), Some(t0 + RETRY_AFTER_FAILURE));
        assert_eq!(zero_min.due(state(Some(t0), true, false)), Some(t0));
        let slow = BoundedFrequency { min: Duration::from_secs(5), ..R };
        assert_eq!(slow.due(state(Some(t0), false, true)), Some(t0 + Duration::from_secs(5)));
    }
}
