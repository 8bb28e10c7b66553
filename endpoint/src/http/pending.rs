//! Reports waiting for their chunks: in memory only, bounded per cluster and over all
//! clusters, in number and in manifest bytes, and in age.
//!
//! Invariants: a pending report is not stored anywhere else, so a restart forgets it
//! (the aggregator's retry posts the manifest again and is told what is still missing);
//! a pending report is its cluster's alone (keyed by cluster and report id: another
//! cluster posting the same id neither replaces nor sees it); a chunk is accepted only
//! while some pending report of the same cluster wants it, so nobody can fill the blob
//! storage with chunks no report names. One cluster filling its quota ([`PendingLimits`])
//! is refused (429) while the others still upload; a report that made no progress (no
//! chunk of it arrived) for `idle_max` is forgotten when room is needed, one older than
//! `age_max` whatever its progress.

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
    /// When a chunk of it last arrived (or it was posted).
    pub progressed: Instant,
    /// The manifest's body bytes, counted against the memory limits.
    pub manifest_bytes: usize,
}

/// The bounds of [`Pending`].
#[derive(Clone, Debug)]
pub struct PendingLimits {
    /// Reports waiting, over all clusters.
    pub reports_max: usize,
    /// Reports waiting for one cluster.
    pub cluster_reports_max: usize,
    /// Manifest bytes held, over all clusters.
    pub manifest_bytes_max: usize,
    /// Manifest bytes held for one cluster.
    pub cluster_manifest_bytes_max: usize,
    /// A report is forgotten this long after it was posted.
    pub age_max: Duration,
    /// A report no chunk of which arrived for this long is forgotten.
    pub idle_max: Duration,
}

/// Per cluster: reports waiting and their manifest bytes.
#[derive(Default, Clone, Copy)]
struct Usage {
    reports: usize,
    manifest_bytes: usize,
}

/// (cluster, report id).
type PendingKey = (String, String);

#[derive(Default)]
struct Inner {
    reports: HashMap<PendingKey, PendingReport>,
    /// (cluster, chunk id) → pending reports wanting it.
    wanted: HashMap<(String, String), u32>,
    clusters: HashMap<String, Usage>,
    manifest_bytes: usize,
}

/// The pending reports of every cluster.
pub struct Pending {
    inner: Mutex<Inner>,
    limits: PendingLimits,
}

impl Inner {
    fn remove(&mut self, key: &PendingKey) -> Option<PendingReport> {
        let report = self.reports.remove(key)?;
        let cluster = &key.0;
        for chunk in &report.missing {
            let chunk_key = (cluster.clone(), chunk.clone());
            if let Some(count) = self.wanted.get_mut(&chunk_key) {
                *count -= 1;
                if *count == 0 {
                    self.wanted.remove(&chunk_key);
                }
            }
        }
        self.manifest_bytes -= report.manifest_bytes;
        if let Some(usage) = self.clusters.get_mut(cluster) {
            usage.reports -= 1;
            usage.manifest_bytes -= report.manifest_bytes;
            if usage.reports == 0 {
                self.clusters.remove(cluster);
            }
        }
        Some(report)
    }

    /// Forgets the reports past their age or idle limit; gives how many.
    fn expire(&mut self, now: Instant, limits: &PendingLimits) -> usize {
        let expired: Vec<PendingKey> = self
            .reports
            .iter()
            .filter(|(_, report)| {
                now.saturating_duration_since(report.created) > limits.age_max
                    || now.saturating_duration_since(report.progressed) > limits.idle_max
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.remove(key);
        }
        expired.len()
    }

    /// Why one more report of `cluster` with `manifest_bytes` does not fit, if it does not.
    fn over_limit(
        &self,
        cluster: &str,
        manifest_bytes: usize,
        limits: &PendingLimits,
    ) -> Option<String> {
        let usage = self.clusters.get(cluster).copied().unwrap_or_default();
        if usage.reports >= limits.cluster_reports_max {
            return Some(format!(
                "cluster {cluster:?} has {} reports waiting for chunks",
                usage.reports
            ));
        }
        if usage.manifest_bytes + manifest_bytes > limits.cluster_manifest_bytes_max {
            return Some(format!(
                "cluster {cluster:?} has {} manifest bytes waiting for chunks (at most {})",
                usage.manifest_bytes, limits.cluster_manifest_bytes_max
            ));
        }
        if self.reports.len() >= limits.reports_max {
            return Some(format!(
                "{} reports are waiting for chunks",
                self.reports.len()
            ));
        }
        if self.manifest_bytes + manifest_bytes > limits.manifest_bytes_max {
            return Some(format!(
                "{} manifest bytes are waiting for chunks (at most {})",
                self.manifest_bytes, limits.manifest_bytes_max
            ));
        }
        None
    }
}

impl Pending {
    /// Pending reports within `limits`.
    pub fn new(limits: PendingLimits) -> Pending {
        Pending {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    /// Adds (or replaces) a pending report of its manifest's cluster, whose body was
    /// `manifest_bytes`; 429 when the cluster's quota or the global one is full.
    pub fn insert(
        &self,
        manifest: Arc<ReportManifest>,
        manifest_bytes: usize,
        missing: Vec<String>,
        now: Instant,
    ) -> Result<(), EndpointError> {
        let mut inner = self.inner.lock().unwrap();
        let cluster = manifest.cluster_id.clone();
        inner.remove(&(cluster.clone(), manifest.report_id.clone()));
        if inner
            .over_limit(&cluster, manifest_bytes, &self.limits)
            .is_some()
        {
            inner.expire(now, &self.limits);
        }
        if let Some(reason) = inner.over_limit(&cluster, manifest_bytes, &self.limits) {
            return Err(EndpointError::TooMany(reason));
        }
        for chunk in &missing {
            *inner
                .wanted
                .entry((cluster.clone(), chunk.clone()))
                .or_insert(0) += 1;
        }
        let usage = inner.clusters.entry(cluster.clone()).or_default();
        usage.reports += 1;
        usage.manifest_bytes += manifest_bytes;
        inner.manifest_bytes += manifest_bytes;
        inner.reports.insert(
            (cluster, manifest.report_id.clone()),
            PendingReport {
                manifest,
                missing: missing.into_iter().collect(),
                created: now,
                progressed: now,
                manifest_bytes,
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
    pub fn arrived(&self, cluster: &str, chunk: &str, now: Instant) {
        let mut inner = self.inner.lock().unwrap();
        if inner
            .wanted
            .remove(&(cluster.to_string(), chunk.to_string()))
            .is_none()
        {
            return;
        }
        for ((report_cluster, _), report) in inner.reports.iter_mut() {
            if report_cluster == cluster && report.missing.remove(chunk) {
                report.progressed = now;
            }
        }
    }

    /// A pending report of `cluster`: its manifest and the chunks it still lacks.
    pub fn get(
        &self,
        cluster: &str,
        report_id: &str,
    ) -> Option<(Arc<ReportManifest>, Vec<String>)> {
        let inner = self.inner.lock().unwrap();
        let report = inner
            .reports
            .get(&(cluster.to_string(), report_id.to_string()))?;
        let mut missing: Vec<String> = report.missing.iter().cloned().collect();
        missing.sort();
        Some((report.manifest.clone(), missing))
    }

    /// Forgets a report of `cluster` (completed, or refused for good).
    pub fn remove(&self, cluster: &str, report_id: &str) {
        self.inner
            .lock()
            .unwrap()
            .remove(&(cluster.to_string(), report_id.to_string()));
    }

    /// Reports waiting now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().reports.len()
    }

    /// Manifest bytes held now.
    pub fn manifest_bytes(&self) -> usize {
        self.inner.lock().unwrap().manifest_bytes
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(cluster: &str, id: u8) -> Arc<ReportManifest> {
        let problem =
            crashmesh_protocol::Problem::new(crashmesh_protocol::ProblemKind::Core, "SIGSEGV");
        Arc::new(ReportManifest {
            format_version: crashmesh_protocol::report::REPORT_FORMAT_VERSION,
            report_id: format!("{id:02x}").repeat(32),
            cluster_id: cluster.into(),
            term: 1,
            customer_id: None,
            signature: "v1:core:f".into(),
            kind: problem.kind,
            problem,
            incidents: Vec::new(),
            attachments: Vec::new(),
            scrub: None,
            created_ms: 0,
        })
    }

    fn limits() -> PendingLimits {
        PendingLimits {
            reports_max: 4,
            cluster_reports_max: 2,
            manifest_bytes_max: 1000,
            cluster_manifest_bytes_max: 600,
            age_max: Duration::from_secs(3600),
            idle_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn one_cluster_fills_its_quota_and_the_others_still_upload() {
        let pending = Pending::new(limits());
        let now = Instant::now();
        let chunk = || vec!["ab".repeat(32)];
        pending.insert(manifest("a", 1), 10, chunk(), now).unwrap();
        pending.insert(manifest("a", 2), 10, chunk(), now).unwrap();
        assert!(matches!(
            pending.insert(manifest("a", 3), 10, chunk(), now),
            Err(EndpointError::TooMany(_))
        ));
        pending.insert(manifest("b", 3), 10, chunk(), now).unwrap();
        // The same id from another cluster is another pending report.
        pending.insert(manifest("b", 1), 10, chunk(), now).unwrap();
        assert!(pending.get("a", &"01".repeat(32)).is_some());
        assert!(pending.get("c", &"01".repeat(32)).is_none());
        assert_eq!(pending.len(), 4);
        // Global count full: a third cluster waits.
        assert!(pending.insert(manifest("c", 9), 10, chunk(), now).is_err());
        pending.remove("b", &"01".repeat(32));
        pending.insert(manifest("c", 9), 10, chunk(), now).unwrap();
        assert!(!pending.wants("d", &"ab".repeat(32)));
        assert!(pending.wants("c", &"ab".repeat(32)));
    }

    #[test]
    fn manifest_bytes_are_bounded_per_cluster_and_over_all() {
        let pending = Pending::new(limits());
        let now = Instant::now();
        pending
            .insert(manifest("a", 1), 500, Vec::new(), now)
            .unwrap();
        assert!(
            pending
                .insert(manifest("a", 2), 200, Vec::new(), now)
                .is_err()
        );
        pending
            .insert(manifest("b", 1), 450, Vec::new(), now)
            .unwrap();
        assert!(
            pending
                .insert(manifest("c", 1), 100, Vec::new(), now)
                .is_err()
        );
        assert_eq!(pending.manifest_bytes(), 950);
        // Replacing a report gives its bytes back first.
        pending
            .insert(manifest("a", 1), 10, Vec::new(), now)
            .unwrap();
        assert_eq!(pending.manifest_bytes(), 460);
    }

    #[test]
    fn a_report_that_stopped_making_progress_makes_room() {
        let pending = Pending::new(limits());
        let start = Instant::now();
        let wanted = |byte: &str| vec![byte.repeat(32)];
        pending
            .insert(manifest("a", 1), 10, wanted("01"), start)
            .unwrap();
        pending
            .insert(
                manifest("a", 2),
                10,
                [wanted("02"), wanted("03")].concat(),
                start,
            )
            .unwrap();
        // Report 2 makes progress; report 1 does not.
        pending.arrived("a", &"02".repeat(32), start + Duration::from_secs(50));
        let later = start + Duration::from_secs(90);
        pending
            .insert(manifest("a", 3), 10, wanted("04"), later)
            .unwrap();
        assert!(
            pending.get("a", &"01".repeat(32)).is_none(),
            "idle: forgotten"
        );
        assert_eq!(
            pending.get("a", &"02".repeat(32)).unwrap().1,
            vec!["03".repeat(32)]
        );
        assert!(!pending.wants("a", &"01".repeat(32)));
    }
}
