//! A token bucket per cluster: `cluster_reports_per_sec_max` refilled per second, up to
//! `cluster_reports_burst_max`. Chunks are not counted: a chunk is only accepted when a
//! pending report wants it, so their number is bounded by the reports admitted.
//!
//! Invariant: the map holds at most [`CLUSTERS_TRACKED_MAX`] buckets; past that it starts
//! over (every cluster gets a full bucket again), which errs on the side of serving.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept.
pub const CLUSTERS_TRACKED_MAX: usize = 100_000;

/// Per-cluster rate limiting.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` sustained, `burst` at once.
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's allowance; false when the cluster is over its rate.
    pub fn allow(&self, cluster: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() >= CLUSTERS_TRACKED_MAX && !buckets.contains_key(cluster) {
            buckets.clear();
        }
        let (tokens, last) = buckets
            .entry(cluster.to_string())
            .or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let limiter = RateLimiter::new(10, 3);
        let start = Instant::now();
        assert!((0..3).all(|_| limiter.allow("a", start)));
        assert!(!limiter.allow("a", start));
        assert!(limiter.allow("b", start));
        assert!(limiter.allow("a", start + Duration::from_millis(100)));
        assert!(!limiter.allow("a", start + Duration::from_millis(100)));
    }
}
