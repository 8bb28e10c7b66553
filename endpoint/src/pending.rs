//! Reports waiting for their chunks: in memory only, bounded in number and age.
//!
//! Invariants: a pending report is not stored anywhere else, so a restart forgets it
//! (the aggregator's retry posts the manifest again and is told what is still missing);
//! a chunk is accepted only while some pending report of the same cluster wants it, so
//! nobody can fill the blob storage with chunks no report names.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crashmesh_protocol::report::ReportManifest;

use crate::error::EndpointError;

/// One report waiting for chunks.
pub struct PendingReport {
    pub manifest: Arc<ReportManifest>,
    /// Chunk ids not yet received.
    pub missing: HashSet<String>,
    pub created: Instant,
}

#[derive(Default)]
struct Inner {
    reports: HashMap<String, PendingReport>,
    /// (cluster, chunk id) → pending reports wanting it.
    wanted: HashMap<(String, String), u32>,
}

/// The pending reports of every cluster.
pub struct Pending {
    inner: Mutex<Inner>,
    reports_max: usize,
    age_max: Duration,
}

impl Inner {
    fn remove(&mut self, report_id: &str) -> Option<PendingReport> {
        let report = self.reports.remove(report_id)?;
        let cluster = report.manifest.cluster_id.clone();
        for chunk in &report.missing {
            let key = (cluster.clone(), chunk.clone());
            if let Some(count) = self.wanted.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.wanted.remove(&key);
                }
            }
        }
        Some(report)
    }
}

impl Pending {
    /// At most `reports_max` reports, each forgotten after `age_max`.
    pub fn new(reports_max: usize, age_max: Duration) -> Pending {
        Pending {
            inner: Mutex::new(Inner::default()),
            reports_max,
            age_max,
        }
    }

    /// Adds (or replaces) a pending report; 429 when full.
    pub fn insert(
        &self,
        manifest: Arc<ReportManifest>,
        missing: Vec<String>,
        now: Instant,
    ) -> Result<(), EndpointError> {
        let mut inner = self.inner.lock().unwrap();
        inner.remove(&manifest.report_id);
        if inner.reports.len() >= self.reports_max {
            let age_max = self.age_max;
            let expired: Vec<String> = inner
                .reports
                .iter()
                .filter(|(_, report)| now.saturating_duration_since(report.created) > age_max)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                inner.remove(&id);
            }
        }
        if inner.reports.len() >= self.reports_max {
            return Err(EndpointError::TooMany(format!(
                "{} reports are waiting for chunks",
                self.reports_max
            )));
        }
        let cluster = manifest.cluster_id.clone();
        for chunk in &missing {
            *inner
                .wanted
                .entry((cluster.clone(), chunk.clone()))
                .or_insert(0) += 1;
        }
        inner.reports.insert(
            manifest.report_id.clone(),
            PendingReport {
                manifest,
                missing: missing.into_iter().collect(),
                created: now,
            },
        );
        Ok(())
    }

    /// True when a pending report of `cluster` wants the chunk.
    pub fn wants(&self, cluster: &str, chunk: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .wanted
            .contains_key(&(cluster.to_string(), chunk.to_string()))
    }

    /// Marks a chunk received for every pending report of `cluster`.
    pub fn arrived(&self, cluster: &str, chunk: &str) {
        let mut inner = self.inner.lock().unwrap();
        if inner
            .wanted
            .remove(&(cluster.to_string(), chunk.to_string()))
            .is_none()
        {
            return;
        }
        for report in inner.reports.values_mut() {
            if report.manifest.cluster_id == cluster {
                report.missing.remove(chunk);
            }
        }
    }

    /// A pending report's manifest and the chunks it still lacks.
    pub fn get(&self, report_id: &str) -> Option<(Arc<ReportManifest>, Vec<String>)> {
        let inner = self.inner.lock().unwrap();
        let report = inner.reports.get(report_id)?;
        let mut missing: Vec<String> = report.missing.iter().cloned().collect();
        missing.sort();
        Some((report.manifest.clone(), missing))
    }

    /// Forgets a report (completed, or refused for good).
    pub fn remove(&self, report_id: &str) {
        self.inner.lock().unwrap().remove(report_id);
    }

    /// Reports waiting now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().reports.len()
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
