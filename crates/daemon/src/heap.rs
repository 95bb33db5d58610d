//! The process heap as glibc's allocator sees it: bytes in live allocations (a leak shows here,
//! whatever the allocator keeps cached), and handing free pages back to the kernel after a sync.
//!
//! Why trim: a sync allocates transiently (the plan, the netlink batch, the conntrack dump) and
//! glibc keeps freed memory in its free lists, returning only the top of the heap to the kernel.
//! In a 10-minute churn soak the resident set then wandered 14–21 MiB while live allocations
//! stayed at ~1.5 MiB; after a 50k-Service cold sync the transient peak would stay resident for
//! the life of the process. `malloc_trim(0)` releases every free page (madvise); it walks the free lists, so it runs
//! after full syncs and at most every 10 s otherwise ([`Trimmer`]), and the daemon logs its
//! duration at debug level. On other C libraries both
//! functions do nothing.

use std::time::{Duration, Instant};

/// Bytes in live allocations (`mallinfo2`: `uordblks` in the heap arenas plus `hblkhd` in
/// mmapped chunks). None where the C library cannot tell.
pub fn in_use_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters (it takes the arena locks).
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Returns free heap pages to the kernel. True when memory was released.
pub fn release_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases memory that is not in use.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// When to trim: after every full sync (the big transients), else at most once per `every`, so
/// a burst of small syncs does not pay for a walk of the free lists each time.
#[derive(Debug)]
pub struct Trimmer {
    every: Duration,
    last: Option<Instant>,
}

impl Trimmer {
    pub fn new(every: Duration) -> Trimmer {
        Trimmer { every, last: None }
    }

    /// Whether a sync that just ended (`full` or not) at `now` should be followed by a trim.
    pub fn due(&self, full: bool, now: Instant) -> bool {
        full || self.last.is_none_or(|t| now.duration_since(t) >= self.every)
    }

    /// Trims if due; returns how long the trim took.
    pub fn after_sync(&mut self, full: bool) -> Option<Duration> {
        let now = Instant::now();
        if !self.due(full, now) {
            return None;
        }
        self.last = Some(now);
        release_free_pages();
        Some(now.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_syncs_always_trim_partial_ones_at_most_once_per_period() {
        let t0 = Instant::now();
        let mut t = Trimmer::new(Duration::from_secs(10));
        assert!(t.due(false, t0), "the first sync trims");
        t.last = Some(t0);
        assert!(!t.due(false, t0 + Duration::from_secs(9)));
        assert!(t.due(true, t0 + Duration::from_secs(1)));
        assert!(t.due(false, t0 + Duration::from_secs(10)));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn in_use_follows_live_allocations() {
        let before = in_use_bytes().unwrap();
        // 64 MiB against a slack of 8 MiB: other tests of this binary allocate meanwhile.
        let big: Vec<u8> = vec![1; 64 << 20];
        let during = in_use_bytes().unwrap();
        assert!(during + (8 << 20) >= before + (64 << 20), "{before} -> {during}");
        drop(big);
        let after = in_use_bytes().unwrap();
        assert!(after + (56 << 20) <= during + (8 << 20), "{during} -> {after}");
    }
}
