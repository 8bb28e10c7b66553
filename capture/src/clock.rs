//! Time as the node's rooms read it: passed in as a [`Clock`], never read from the CLI.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix milliseconds, from whatever the caller chose to trust.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The wall clock: when things happened, as people and other machines read times.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// The wall clock's unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| duration.as_millis() as u64)
        .unwrap_or(0)
}

/// A clock that never goes back: unix milliseconds anchored at the wall clock when it
/// was made, then moved by a monotonic `Instant` (timers must not jump when the wall
/// clock is set back).
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    started: Instant,
    started_unix_ms: u64,
}

impl MonotonicClock {
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            started: Instant::now(),
            started_unix_ms: now_ms(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.started_unix_ms + self.started.elapsed().as_millis() as u64
    }
}
