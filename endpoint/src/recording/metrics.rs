//! Counters for `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every counter the endpoint keeps; all only go up.
#[derive(Default)]
pub struct Metrics {
    pub reports_completed: AtomicU64,
    pub reports_repeated: AtomicU64,
    pub incidents_recorded: AtomicU64,
    pub problems_new: AtomicU64,
    pub problems_merged: AtomicU64,
    pub bugs_opened: AtomicU64,
    pub bugs_reopened: AtomicU64,
    pub chunks_stored: AtomicU64,
    pub chunk_bytes_received: AtomicU64,
    pub payload_bytes_stored: AtomicU64,
    pub requests_refused: AtomicU64,
    pub webhooks_sent: AtomicU64,
    pub webhooks_failed: AtomicU64,
    pub webhooks_dropped: AtomicU64,
    pub commit_batches: AtomicU64,
    /// Refused requests by reason (the error's `code`: `unauthorized`, `foreign_report`,
    /// `term_too_far`, `body_timeout`, `too_many_requests`, …): a fixed set of names.
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Adds `value` to a counter.
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts a refusal for `reason`.
    pub fn refused(&self, reason: &'static str) {
        *self.refused.lock().unwrap().entry(reason).or_insert(0) += 1;
    }

    /// Refusals counted for `reason`.
    pub fn refused_count(&self, reason: &str) -> u64 {
        self.refused
            .lock()
            .unwrap()
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text, with gauges the caller measured.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "reports_completed_total",
                "Reports stored",
                &self.reports_completed,
            ),
            (
                "reports_repeated_total",
                "Uploads of a report already stored (answered, not stored again)",
                &self.reports_repeated,
            ),
            (
                "incidents_recorded_total",
                "Incidents recorded",
                &self.incidents_recorded,
            ),
            (
                "problems_new_total",
                "Problems seen for the first time",
                &self.problems_new,
            ),
            (
                "problems_merged_total",
                "Problems an admin merged into another",
                &self.problems_merged,
            ),
            ("bugs_opened_total", "Bugs opened", &self.bugs_opened),
            (
                "bugs_reopened_total",
                "Closed bugs reopened as regressions",
                &self.bugs_reopened,
            ),
            (
                "chunks_stored_total",
                "Chunks verified and stored",
                &self.chunks_stored,
            ),
            (
                "chunk_bytes_received_total",
                "Compressed chunk bytes received",
                &self.chunk_bytes_received,
            ),
            (
                "payload_bytes_stored_total",
                "Uncompressed bytes of stored chunks",
                &self.payload_bytes_stored,
            ),
            (
                "requests_refused_total",
                "Requests answered with a 4xx or 5xx",
                &self.requests_refused,
            ),
            (
                "webhooks_sent_total",
                "Webhook events delivered",
                &self.webhooks_sent,
            ),
            (
                "webhooks_failed_total",
                "Webhook deliveries that failed",
                &self.webhooks_failed,
            ),
            (
                "webhooks_dropped_total",
                "Webhook events dropped on a full queue",
                &self.webhooks_dropped,
            ),
            (
                "commit_batches_total",
                "Metadata transactions committed",
                &self.commit_batches,
            ),
        ];
        let mut out = String::new();
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP crashmesh_endpoint_{name} {help}");
            let _ = writeln!(out, "# TYPE crashmesh_endpoint_{name} counter");
            let _ = writeln!(
                out,
                "crashmesh_endpoint_{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP crashmesh_endpoint_refused_total Requests refused, by reason"
        );
        let _ = writeln!(out, "# TYPE crashmesh_endpoint_refused_total counter");
        for (reason, count) in self.refused.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "crashmesh_endpoint_refused_total{{reason=\"{reason}\"}} {count}"
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP crashmesh_endpoint_{name} {help}");
            let _ = writeln!(out, "# TYPE crashmesh_endpoint_{name} gauge");
            let _ = writeln!(out, "crashmesh_endpoint_{name} {value}");
        }
        out
    }
}
