//! The aggregator's upload to the endpoint ([`Uploader`]): an [`UploadReport`] becomes a
//! [`ReportManifest`] (the fence, the first incident's problem, every incident, the
//! document and the evidence as attachments named `NODE/NAME`, see [`crate::report`]); the
//! manifest is POSTed, only the chunks the endpoint names as missing are PUT, and the
//! report is completed. [`UploadIncidents`] become one [`IncidentUpdate`]. Outcomes:
//! `Acked`; `StaleTerm` for a 409 `stale_term`; `Retry` for everything else (network, 5xx,
//! other refusals — the consolidation retries with backoff up to its ceiling).
//!
//! What went out is counted in `DATA_DIR/upload-stats.json` ([`UploadStats`]): bytes
//! sent, and for each problem the bytes its full report costs when sent whole (what a
//! per-node uploader would send for every incident). `crashmesh demo` reads it. The
//! endpoint's answer about a problem is kept for `problems show` ([`endpoint_reply`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use crashmesh_endpoint_client::{Answer, Client};
use crashmesh_protocol::consolidation::{UploadIncidents, UploadOutcome, UploadReport};
use crashmesh_protocol::report::{
    Attachment, BugRef, Incident, IncidentUpdate, REPORT_FORMAT_VERSION, ReportManifest,
    UploadReply,
};
use crashmesh_protocol::wire::Feedback;
use crashmesh_store::{ChunkId, Store};
use serde::{Deserialize, Serialize};

use crate::config::UploadConfig;
use crate::report::{
    LogBundle, blob_manifest, consolidated_report_id, incident_of, read_document, read_node_report,
};

/// The store setting prefix of the endpoint's answer per problem id.
pub const REPLY_SETTING_PREFIX: &str = "upload.reply.v1.";
/// The file (in the data dir) counting what left the cluster through this node.
pub const UPLOAD_STATS_FILE: &str = "upload-stats.json";

/// The endpoint's answer as the cluster passes it on.
pub fn feedback_of(reply: &UploadReply) -> Feedback {
    Feedback {
        problem_id: reply.problem_id.clone(),
        known: reply.known,
        bug: reply
            .bug
            .as_ref()
            .map(|bug| (bug.id, bug.status.clone(), bug.url.clone())),
        workaround: reply.workaround.clone(),
    }
}

/// Keeps what the aggregator passed on about a problem for `problems show`.
pub fn record_feedback(store: &Store, signature: &str, feedback: &Feedback) {
    let reply = UploadReply {
        problem_id: feedback.problem_id.clone(),
        known: feedback.known,
        bug: feedback.bug.as_ref().map(|(id, status, url)| BugRef {
            id: *id,
            status: status.clone(),
            url: url.clone(),
        }),
        workaround: feedback.workaround.clone(),
        missing_chunks: Vec::new(),
    };
    keep_reply(store, signature, &reply);
}

fn keep_reply(store: &Store, signature: &str, reply: &UploadReply) {
    // The store's problem of the signature (which may be the one an older signature of
    // the same crash made), else the id the signature gives.
    let local_problem_id = match store.problem_of_signature(signature) {
        Ok(Some(problem)) => problem.id,
        _ => crashmesh_store::problem_id_for(signature, ""),
    };
    let bytes = serde_json::to_vec(reply).expect("a reply serializes");
    if let Err(error) =
        store.put_setting(&format!("{REPLY_SETTING_PREFIX}{local_problem_id}"), &bytes)
    {
        tracing::warn!(%error, "cannot keep the endpoint's answer");
    }
}

/// What left the cluster through this node (`upload-stats.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UploadStats {
    /// Request bodies sent to the endpoint: manifests, chunks, updates.
    pub bytes_sent: u64,
    /// Per signature: the manifest plus every chunk compressed — a whole report.
    pub full_report_bytes: BTreeMap<String, u64>,
    /// Uploads acknowledged.
    pub uploads_acked: u64,
}

impl UploadStats {
    /// The stats in `data_dir` (empty when there are none yet).
    pub fn load(data_dir: &Path) -> UploadStats {
        std::fs::read(data_dir.join(UPLOAD_STATS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save(&self, data_dir: &Path) -> Result<()> {
        let path = data_dir.join(UPLOAD_STATS_FILE);
        let tmp = data_dir.join(format!("{UPLOAD_STATS_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// How one upload ended, with the endpoint's answer when there was one.
#[derive(Debug)]
pub struct Finished {
    pub outcome: UploadOutcome,
    pub reply: Option<UploadReply>,
}

/// The aggregator's client of the endpoint (blocking: run it on its own thread).
pub struct Uploader {
    client: Client,
    store: std::sync::Arc<Store>,
    data_dir: PathBuf,
    chunk_attempts_max: u32,
    stats: UploadStats,
    /// `[privacy] mode = "customer"`: every report and update is scrubbed before it leaves.
    customer: Option<crate::customer::CustomerMode>,
}

impl Uploader {
    /// An uploader per `[upload]`; `None` when no endpoint is configured.
    pub fn new(
        config: &UploadConfig,
        store: std::sync::Arc<Store>,
        data_dir: &Path,
    ) -> Result<Option<Uploader>> {
        if config.endpoint.is_empty() {
            return Ok(None);
        }
        let token = if config.token.is_empty() && !config.token_file.as_os_str().is_empty() {
            std::fs::read_to_string(&config.token_file)
                .with_context(|| format!("reading {}", config.token_file.display()))?
                .trim()
                .to_string()
        } else {
            config.token.clone()
        };
        if token.is_empty() {
            bail!("[upload] endpoint is set but neither token nor token_file");
        }
        let client = if config.ca_cert.as_os_str().is_empty() {
            Client::new(&config.endpoint, &token)
        } else {
            let ca_pem = std::fs::read(&config.ca_cert)
                .with_context(|| format!("[upload] ca_cert {}", config.ca_cert.display()))?;
            Client::with_ca(&config.endpoint, &token, &ca_pem)
                .with_context(|| format!("[upload] ca_cert {}", config.ca_cert.display()))?
        };
        Ok(Some(Uploader {
            client,
            store,
            data_dir: data_dir.to_path_buf(),
            chunk_attempts_max: config.chunk_attempts_max.max(1),
            stats: UploadStats::load(data_dir),
            customer: crate::customer::CustomerMode::from_config(&config.privacy, data_dir)?,
        }))
    }

    fn save_stats(&self) {
        if let Err(error) = self.stats.save(&self.data_dir) {
            tracing::warn!(%error, "cannot write the upload stats");
        }
    }

    /// Classifies an answer that is not a success.
    fn outcome_of_refusal(answer: &Answer) -> UploadOutcome {
        if answer.status == 409 && answer.json()["code"] == "stale_term" {
            UploadOutcome::StaleTerm
        } else {
            UploadOutcome::Retry
        }
    }

    fn finished_refused(what: &str, answer: &Answer) -> Finished {
        let outcome = Self::outcome_of_refusal(answer);
        tracing::warn!(status = answer.status, body = %answer.body, ?outcome, "{what} refused by the endpoint");
        Finished {
            outcome,
            reply: None,
        }
    }

    fn finished_transport(what: &str, error: impl std::fmt::Display) -> Finished {
        tracing::warn!(%error, "{what}: the endpoint is unreachable; retried later");
        Finished {
            outcome: UploadOutcome::Retry,
            reply: None,
        }
    }

    /// Builds the consolidated report of `upload` from the fetched chunks of its first
    /// incident (`chunk_ids`, as the origin offered them) and of the peers' log bundles
    /// (`peer_logs`: peer name, the bundle's chunks).
    pub fn manifest(
        &self,
        upload: &UploadReport,
        chunk_ids: &[ChunkId],
        peer_logs: &[(String, Vec<ChunkId>)],
    ) -> Result<ReportManifest> {
        let read = read_node_report(&self.store, chunk_ids)?;
        let origin = upload.first.node.as_str();
        let mut attachments = vec![Attachment {
            name: format!("{origin}/report.json"),
            blob: read.document_manifest,
        }];
        for (name, manifest) in &read.document.attachments {
            attachments.push(Attachment {
                name: format!("{origin}/{name}"),
                blob: blob_manifest(manifest),
            });
        }
        for (peer, bundle_chunks) in peer_logs {
            let bundle = match read_document::<LogBundle>(&self.store, bundle_chunks) {
                Ok((bundle, _)) => bundle,
                Err(error) => {
                    tracing::warn!(%peer, error = %format!("{error:#}"), "a peer's log bundle is unreadable; left out");
                    continue;
                }
            };
            for (name, manifest) in &bundle.attachments {
                attachments.push(Attachment {
                    name: format!("{peer}/peer-logs/{name}"),
                    blob: blob_manifest(manifest),
                });
            }
        }
        let mut incidents: Vec<Incident> = vec![incident_of(&upload.first)];
        incidents.extend(
            upload
                .incidents
                .iter()
                .filter(|record| record.report_id != upload.first.report_id)
                .map(incident_of),
        );
        let manifest = ReportManifest {
            format_version: REPORT_FORMAT_VERSION,
            report_id: consolidated_report_id(&upload.fence.cluster_id.0, &upload.signature),
            cluster_id: upload.fence.cluster_id.0.clone(),
            term: upload.fence.term,
            customer_id: None,
            problem: read.document.problem,
            signature: upload.signature.clone(),
            kind: upload.kind,
            incidents,
            attachments,
            scrub: None,
            created_ms: crashmesh_capture::clock::now_ms(),
        };
        let manifest = match &self.customer {
            Some(customer) => customer.scrub_manifest(&self.store, manifest)?,
            None => manifest,
        };
        manifest.validate().context("the consolidated report")?;
        Ok(manifest)
    }

    /// Uploads a new problem: manifest, the chunks the endpoint lacks, completion.
    pub fn upload_report(
        &mut self,
        upload: &UploadReport,
        chunk_ids: &[ChunkId],
        peer_logs: &[(String, Vec<ChunkId>)],
    ) -> Finished {
        let manifest = match self.manifest(upload, chunk_ids, peer_logs) {
            Ok(manifest) => manifest,
            Err(error) => {
                tracing::error!(signature = %upload.signature, error = %format!("{error:#}"), "cannot build the consolidated report; retried later");
                return Finished {
                    outcome: UploadOutcome::Retry,
                    reply: None,
                };
            }
        };
        let body = serde_json::to_vec(&manifest).expect("a manifest serializes");
        let answer = match self.client.post("/api/v1/reports", &body) {
            Ok(answer) => answer,
            Err(error) => return Self::finished_transport("report manifest", error),
        };
        self.stats.bytes_sent += body.len() as u64;
        let full_entry = self
            .stats
            .full_report_bytes
            .entry(upload.signature.clone())
            .or_insert(0);
        if *full_entry == 0 {
            // What sending the whole report costs: the manifest and every chunk compressed.
            let mut full = body.len() as u64;
            let mut seen = std::collections::HashSet::new();
            for id in manifest.chunk_ids() {
                if seen.insert(id.to_string())
                    && let Ok(chunk) = id.parse::<ChunkId>()
                    && let Ok(bytes) = self.store.chunk_bytes(&chunk)
                {
                    full += bytes.len() as u64;
                }
            }
            *full_entry = full;
        }
        let reply = match answer.status {
            200 => answer.reply(),
            202 => {
                let Some(reply) = answer.reply() else {
                    return Self::finished_refused("report manifest", &answer);
                };
                for id in &reply.missing_chunks {
                    if let Some(finished) = self.put_chunk(id) {
                        self.save_stats();
                        return finished;
                    }
                }
                let path = format!("/api/v1/reports/{}/complete", manifest.report_id);
                match self.client.post(&path, b"") {
                    Ok(answer) if answer.status == 200 => answer.reply(),
                    Ok(answer) => {
                        self.save_stats();
                        return Self::finished_refused("report completion", &answer);
                    }
                    Err(error) => {
                        self.save_stats();
                        return Self::finished_transport("report completion", error);
                    }
                }
            }
            _ => {
                self.save_stats();
                return Self::finished_refused("report manifest", &answer);
            }
        };
        self.stats.uploads_acked += 1;
        self.stats.bytes_sent += crate::customer::core_request_after_ack(
            self.customer.as_ref(),
            &self.client,
            &self.store,
            &manifest.report_id,
            reply.as_ref(),
        );
        self.save_stats();
        tracing::info!(
            signature = %upload.signature, report = %manifest.report_id,
            incidents = manifest.incidents.len(), attachments = manifest.attachments.len(),
            problem = ?reply.as_ref().map(|reply| reply.problem_id.clone()),
            "report uploaded"
        );
        Finished {
            outcome: UploadOutcome::Acked,
            reply,
        }
    }

    /// PUTs one chunk the endpoint lacks; `Some` says how the upload ends when it failed.
    fn put_chunk(&mut self, id: &str) -> Option<Finished> {
        let retry = || Finished {
            outcome: UploadOutcome::Retry,
            reply: None,
        };
        let Ok(chunk) = id.parse::<ChunkId>() else {
            tracing::error!(chunk = %id, "the endpoint named a chunk id that is not one");
            return Some(retry());
        };
        let bytes = match self.store.chunk_bytes(&chunk) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, chunk = %id, "the endpoint wants a chunk this store cannot read");
                return Some(retry());
            }
        };
        let mut last = None;
        for _ in 0..self.chunk_attempts_max {
            match self.client.put(&format!("/api/v1/chunks/{id}"), &bytes) {
                Ok(answer) if answer.status == 204 || answer.status == 200 => {
                    self.stats.bytes_sent += bytes.len() as u64;
                    return None;
                }
                Ok(answer) if answer.status < 500 => {
                    return Some(Self::finished_refused("chunk upload", &answer));
                }
                Ok(answer) => last = Some(format!("HTTP {}: {}", answer.status, answer.body)),
                Err(error) => last = Some(error.to_string()),
            }
        }
        Some(Self::finished_transport(
            "chunk upload",
            last.unwrap_or_default(),
        ))
    }

    /// Uploads later incidents of a problem the endpoint has.
    pub fn upload_incidents(&mut self, upload: &UploadIncidents) -> Finished {
        let update = IncidentUpdate {
            report_id: consolidated_report_id(&upload.fence.cluster_id.0, &upload.signature),
            cluster_id: upload.fence.cluster_id.0.clone(),
            term: upload.fence.term,
            signature: upload.signature.clone(),
            incidents: upload.incidents.iter().map(incident_of).collect(),
        };
        let update = match &self.customer {
            None => update,
            Some(customer) => match customer.scrub_update(update) {
                Ok(update) => update,
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "cannot scrub the incident update; retried later");
                    return Finished {
                        outcome: UploadOutcome::Retry,
                        reply: None,
                    };
                }
            },
        };
        let body = serde_json::to_vec(&update).expect("an update serializes");
        let answer = match self.client.post("/api/v1/incidents", &body) {
            Ok(answer) => answer,
            Err(error) => return Self::finished_transport("incident update", error),
        };
        self.stats.bytes_sent += body.len() as u64;
        self.save_stats();
        if answer.status != 200 && answer.status != 202 {
            return Self::finished_refused("incident update", &answer);
        }
        tracing::info!(signature = %upload.signature, incidents = update.incidents.len(), "incidents uploaded");
        let reply = answer.reply();
        self.stats.bytes_sent += crate::customer::core_request_after_ack(
            self.customer.as_ref(),
            &self.client,
            &self.store,
            &update.report_id,
            reply.as_ref(),
        );
        Finished {
            outcome: UploadOutcome::Acked,
            reply,
        }
    }

    /// Keeps the endpoint's answer for `problems show` and marks the problem uploaded
    /// when this node has it too.
    pub fn record_reply(&self, signature: &str, reply: &UploadReply) {
        keep_reply(&self.store, signature, reply);
    }
}

/// The endpoint's last answer about a problem of this store, if an upload through this
/// node got one.
pub fn endpoint_reply(store: &Store, problem_id: &str) -> Option<UploadReply> {
    let bytes = store
        .get_setting(&format!("{REPLY_SETTING_PREFIX}{problem_id}"))
        .ok()??;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::*;
    use crashmesh_protocol::consolidation::IncidentRecord;
    use crashmesh_protocol::model::Problem;
    use crashmesh_protocol::model::ProblemKind;
    use crashmesh_store::{NewIncident, StoreConfig};

    /// Bytes that do not compress or repeat (so FastCDC cuts several chunks).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A store with one incident (`node-1:1-2-3`) holding a 1 MiB core and a log.
    fn store_with_incident(dir: &Path) -> Store {
        let store = Store::open(dir, StoreConfig::default()).unwrap();
        let core = store.put_blob_bytes(&noise(1 << 20, 1)).unwrap();
        let maps = store.put_blob_bytes(&noise(70_000, 2)).unwrap();
        let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV in store_reading");
        problem.signature = "v1:0123456789abcdef0123456789abcdef01234567".to_string();
        // A long text makes the document span several chunks.
        problem.text = Some(
            noise(300_000, 3)
                .iter()
                .map(|byte| char::from(b'a' + byte % 26))
                .collect(),
        );
        store
            .record_incident(NewIncident {
                report_id: "node-1:1-2-3".to_string(),
                time_ms: 1_700_000_000_000,
                node: "node-1".to_string(),
                problem,
                executable: Some("/usr/bin/demo".to_string()),
                pid: Some(42),
                uid: Some(0),
                signal: Some(11),
                core: Some(core),
                core_truncated: false,
                attachments: vec![("proc/maps".to_string(), maps)],
                labels: Default::default(),
            })
            .unwrap();
        store
    }

    #[test]
    fn a_node_report_reads_back_from_its_chunks_even_when_the_document_spans_several() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_incident(dir.path());
        assert!(
            build_node_report(&store, "node-1:9-9-9", "node-1")
                .unwrap()
                .is_none()
        );
        let report = build_node_report(&store, "node-1:1-2-3", "node-1")
            .unwrap()
            .unwrap();
        let read = read_node_report(&store, &report.chunk_ids).unwrap();
        let document_chunks = read.document_manifest.chunks.len();
        assert!(document_chunks > 1, "the document spans several chunks");
        assert_eq!(read.document.report_id, "node-1:1-2-3");
        assert_eq!(read.document_manifest.blob_id, report.document.to_hex());
        let names: Vec<&str> = read
            .document
            .attachments
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(names, ["core", "proc/maps"]);
        // The rest of the list is exactly the evidence's chunks, in order.
        let evidence: Vec<ChunkId> = read
            .document
            .attachments
            .iter()
            .flat_map(|(_, manifest)| manifest.chunks.iter().map(|(id, _)| *id))
            .collect();
        assert_eq!(&report.chunk_ids[document_chunks..], evidence.as_slice());
        // A list cut inside the document is refused, not misread.
        assert!(read_node_report(&store, &report.chunk_ids[..document_chunks - 1]).is_err());
    }

    #[test]
    fn the_consolidated_report_id_depends_on_cluster_and_signature_only() {
        let id = consolidated_report_id("c", "v1:aa");
        assert!(crashmesh_protocol::report::is_hex_id(&id));
        assert_eq!(id, consolidated_report_id("c", "v1:aa"));
        assert_ne!(id, consolidated_report_id("d", "v1:aa"));
        assert_ne!(id, consolidated_report_id("c", "v1:ab"));
    }

    #[test]
    fn the_upload_sends_only_missing_chunks_once_and_a_lower_term_is_fenced() {
        use crashmesh_protocol::consolidation::Fence;
        use crashmesh_protocol::wire::{ClusterId, NodeId, ReportId};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store_with_incident(&dir.path().join("node")));
        let endpoint_dir = dir.path().join("endpoint");
        let token = {
            let db = crashmesh_endpoint::storage::Db::open(&endpoint_dir).unwrap();
            crashmesh_endpoint::http::auth::create_cluster_token(&db, "c1").unwrap()
        };
        let server = crashmesh_endpoint::start(
            crashmesh_endpoint::EndpointConfig {
                listen: "127.0.0.1:0".into(),
                data_dir: endpoint_dir,
                workers: 2,
                ..Default::default()
            },
            crashmesh_endpoint::ServerMode::Real,
        )
        .unwrap();
        let config = UploadConfig {
            endpoint: server.url.clone(),
            token,
            ..UploadConfig::default()
        };
        let mut uploader = Uploader::new(&config, store.clone(), dir.path())
            .unwrap()
            .unwrap();
        let report = build_node_report(&store, "node-1:1-2-3", "node-1")
            .unwrap()
            .unwrap();
        let first = IncidentRecord {
            report_id: ReportId::new("node-1:1-2-3"),
            node: NodeId::new("node-1"),
            time_ms: 1_700_000_000_000,
            labels: Vec::new(),
            report_bytes: report.report_bytes,
        };
        let signature = "v1:0123456789abcdef0123456789abcdef01234567".to_string();
        let upload = |term| UploadReport {
            upload_id: 1,
            fence: Fence {
                cluster_id: ClusterId("c1".into()),
                term,
            },
            signature: signature.clone(),
            kind: ProblemKind::Core,
            first: first.clone(),
            incidents: vec![first.clone()],
            peer_logs: Vec::new(),
        };
        // A peer's logs of the window, gathered into a bundle (here in the same store).
        let window = crashmesh_gather::logs::Window {
            from_ms: 1_700_000_000_000 - 60_000,
            to_ms: 1_700_000_000_000 + 10_000,
            problem_ms: 1_700_000_000_000,
        };
        let gathered = crashmesh_gather::logs::Gathered {
            attachments: vec![(
                "log/var/log/csd.log".to_string(),
                b"2023-11-14T22:13:20Z csd: error: lost chunk server 7\n".to_vec(),
            )],
            notes: vec!["journal: empty for the window".to_string()],
        };
        let bundle = build_log_bundle(
            &store,
            "logs.node-2.x",
            "node-2",
            &signature,
            window,
            gathered,
        )
        .unwrap()
        .unwrap();
        assert!(
            build_log_bundle(
                &store,
                "logs.node-3.x",
                "node-3",
                &signature,
                window,
                Default::default()
            )
            .unwrap()
            .is_none(),
            "nothing gathered, no bundle"
        );
        let peer_logs = vec![("node-2".to_string(), bundle.chunk_ids.clone())];
        let manifest = uploader
            .manifest(&upload(5), &report.chunk_ids, &peer_logs)
            .unwrap();
        let names: Vec<&str> = manifest
            .attachments
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "node-1/report.json",
                "node-1/core",
                "node-1/proc/maps",
                "node-2/peer-logs/log/var/log/csd.log",
                "node-2/peer-logs/notes.txt"
            ]
        );
        let finished = uploader.upload_report(&upload(5), &report.chunk_ids, &peer_logs);
        assert_eq!(finished.outcome, UploadOutcome::Acked);
        let reply = finished.reply.unwrap();
        assert!(!reply.known);
        let after_first = UploadStats::load(dir.path()).bytes_sent;
        assert!(after_first > 1 << 20, "the core went up: {after_first}");
        // Again (a new aggregator finishing the same work): only the manifest moves.
        let finished = uploader.upload_report(&upload(6), &report.chunk_ids, &peer_logs);
        assert_eq!(finished.outcome, UploadOutcome::Acked);
        let again = UploadStats::load(dir.path()).bytes_sent - after_first;
        // (The manifest carries the problem, whose long text makes it ~300 KB here.)
        assert!(
            again + (1 << 20) < after_first,
            "a repeat sent {again} bytes, the first {after_first}"
        );
        // A lower term than the endpoint has seen is fenced.
        let second = IncidentRecord {
            report_id: ReportId::new("node-2:1-2-3"),
            node: NodeId::new("node-2"),
            ..first.clone()
        };
        let stale = UploadIncidents {
            upload_id: 2,
            fence: Fence {
                cluster_id: ClusterId("c1".into()),
                term: 4,
            },
            signature: signature.clone(),
            kind: ProblemKind::Core,
            incidents: vec![second.clone()],
        };
        assert_eq!(
            uploader.upload_incidents(&stale).outcome,
            UploadOutcome::StaleTerm
        );
        let current = UploadIncidents {
            fence: Fence {
                cluster_id: ClusterId("c1".into()),
                term: 6,
            },
            ..stale
        };
        let finished = uploader.upload_incidents(&current);
        assert_eq!(finished.outcome, UploadOutcome::Acked);
        assert!(finished.reply.unwrap().known);
        server.stop();
    }
}
