//! Quotas and eviction, in the order stated in the crate's documentation.

use std::collections::HashMap;

use tracing::info;

use crate::error::StoreError;
use crate::index::Tables;
use crate::index::{IncidentRow, META_EVICTED_BYTES, meta_add};
use crate::store::Store;
use crate::types::{EvictionReport, EvidenceState, UploadState};

/// Eviction passes per call: each pass re-measures, since the index itself grows.
const EVICTION_PASSES_MAX: usize = 4;
/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// One piece of kept evidence that eviction may drop.
struct Candidate {
    expired: bool,
    step: u8,
    uploaded: bool,
    time_ms: u64,
    report_id: String,
    /// `None` for the core, else the attachment's index.
    attachment: Option<usize>,
}

impl Store {
    /// Keeps the store inside its limit (and drops evidence older than `max_age_days`),
    /// evicting in the documented order. Call it after every write and periodically.
    pub fn enforce_quota(&self, now_ms: u64) -> Result<EvictionReport, StoreError> {
        let _one_pass_at_a_time = self
            .quota_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Garbage a put kept from being collected when it was made goes now.
        self.collect_garbage()?;
        let used_bytes_before = self.used_bytes()?;
        let (allowed_bytes, _) = self.allowed_bytes(used_bytes_before)?;
        let mut report = EvictionReport {
            used_bytes_before,
            allowed_bytes,
            ..EvictionReport::default()
        };
        let mut used_bytes = used_bytes_before;
        for pass in 0..EVICTION_PASSES_MAX {
            let expire = pass == 0 && self.config.max_age_days > 0;
            if !expire && used_bytes <= allowed_bytes {
                break;
            }
            let evicted_before = report.evicted.len();
            let freed = self.evict_pass(now_ms, used_bytes, allowed_bytes, expire, &mut report)?;
            self.collect_garbage()?;
            report.freed_bytes += freed;
            used_bytes = self.used_bytes()?;
            if report.evicted.len() == evicted_before && !expire {
                break;
            }
        }
        report.used_bytes_after = used_bytes;
        report.still_over_quota = used_bytes > allowed_bytes;
        if !report.evicted.is_empty() {
            info!(
                evicted = report.evicted.len(),
                freed_bytes = report.freed_bytes,
                used_bytes,
                allowed_bytes,
                "evicted evidence"
            );
        }
        Ok(report)
    }

    fn evict_pass(
        &self,
        now_ms: u64,
        used_bytes: u64,
        allowed_bytes: u64,
        expire: bool,
        report: &mut EvictionReport,
    ) -> Result<u64, StoreError> {
        let age_limit_ms = u64::from(self.config.max_age_days).saturating_mul(DAY_MS);
        let txn = self.db.begin_write()?;
        let mut freed_bytes = 0u64;
        {
            let mut tables = Tables::open(&txn)?;
            let mut incidents: HashMap<String, IncidentRow> = self
                .all_incidents(&tables)?
                .into_iter()
                .map(|row| (row.report_id.clone(), row))
                .collect();
            let mut problems = self.all_problems(&tables)?;
            let mut candidates = Vec::new();
            for row in incidents.values() {
                let expired = expire && now_ms.saturating_sub(row.time_ms) > age_limit_ms;
                let problem = problems.get(&row.problem_id);
                let uploaded =
                    problem.is_some_and(|p| matches!(p.upload, UploadState::Uploaded { .. }));
                let first_core = problem
                    .and_then(|p| p.first_core_report.as_deref())
                    .is_some_and(|first| first == row.report_id);
                if row
                    .core
                    .as_ref()
                    .is_some_and(|e| e.state == EvidenceState::Kept)
                {
                    candidates.push(Candidate {
                        expired,
                        step: if first_core { 2 } else { 1 },
                        uploaded,
                        time_ms: row.time_ms,
                        report_id: row.report_id.clone(),
                        attachment: None,
                    });
                }
                for (index, attachment) in row.attachments.iter().enumerate() {
                    if attachment.state == EvidenceState::Kept {
                        candidates.push(Candidate {
                            expired,
                            step: 3,
                            uploaded,
                            time_ms: row.time_ms,
                            report_id: row.report_id.clone(),
                            attachment: Some(index),
                        });
                    }
                }
            }
            candidates.sort_by(|a, b| {
                (
                    !a.expired,
                    a.step,
                    !a.uploaded,
                    a.time_ms,
                    &a.report_id,
                    a.attachment,
                )
                    .cmp(&(
                        !b.expired,
                        b.step,
                        !b.uploaded,
                        b.time_ms,
                        &b.report_id,
                        b.attachment,
                    ))
            });
            let mut touched = Vec::new();
            for candidate in candidates {
                if !candidate.expired && used_bytes.saturating_sub(freed_bytes) <= allowed_bytes {
                    break;
                }
                let row = incidents
                    .get_mut(&candidate.report_id)
                    .expect("candidates come from these rows");
                let evidence = match candidate.attachment {
                    None => row.core.as_mut().expect("a core candidate has a core"),
                    Some(index) => &mut row.attachments[index],
                };
                let state = if candidate.expired {
                    EvidenceState::Expired
                } else {
                    EvidenceState::Evicted
                };
                evidence.state = state;
                freed_bytes += tables.adjust_blob(&evidence.blob, -1, 0)?;
                if let Some(problem) = problems.get_mut(&row.problem_id) {
                    problem.bytes_kept = problem.bytes_kept.saturating_sub(evidence.len_bytes);
                    if candidate.attachment.is_none() {
                        problem.cores_kept = problem.cores_kept.saturating_sub(1);
                    }
                }
                report
                    .evicted
                    .push((row.report_id.clone(), evidence.name.clone(), state));
                touched.push(candidate.report_id);
            }
            touched.sort();
            touched.dedup();
            let mut touched_problems = Vec::new();
            for report_id in touched {
                let row = &incidents[&report_id];
                tables.put_incident(row)?;
                touched_problems.push(row.problem_id.clone());
            }
            touched_problems.sort();
            touched_problems.dedup();
            for problem_id in touched_problems {
                if let Some(problem) = problems.get(&problem_id) {
                    tables.put_problem(problem)?;
                }
            }
            meta_add(&mut tables.meta, META_EVICTED_BYTES, freed_bytes as i128)?;
        }
        txn.commit()?;
        Ok(freed_bytes)
    }
}
