//! The reports nodes pass between them and up to the endpoint.
//!
//! - **A node's report** (what the aggregator pulls from an origin): a small JSON
//!   [`ReportDocument`] — the problem, the incident, every kept piece of evidence with its
//!   blob manifest — stored as a blob, followed by the evidence blobs. Its chunk list is
//!   the document's chunks, then every evidence blob's chunks in order
//!   ([`build_node_report`]). The receiver finds where the document ends by reading chunks
//!   until they parse as one JSON document ([`read_node_report`]); the document then names
//!   the rest.
//! - **A peer's log bundle** ([`LogBundle`]): the logs a peer gathered for another node's
//!   problem window, stored and paged the same way.
//! - The consolidated report's id is a hash of the cluster and the signature
//!   ([`consolidated_report_id`]), so any aggregator of any term uploads a problem under
//!   the same id (the endpoint is idempotent by it) and incident updates name it without
//!   remembering anything.

use anyhow::{Context as _, Result, bail};
use crashmesh_protocol::consolidation::IncidentRecord;
use crashmesh_protocol::model::Problem;
use crashmesh_protocol::report::{BlobManifest, Incident};
use crashmesh_protocol::wire::ChunkId as WireChunkId;
use crashmesh_store::{BlobId, ChunkId, EvidenceState, IncidentDetail, Manifest, Store};
use serde::{Deserialize, Serialize};

/// The version of [`ReportDocument`] this build writes and reads.
pub const REPORT_DOCUMENT_VERSION: u32 = 1;
/// The largest report document read back (a 64 GiB core's manifest is ~19 MiB).
pub const REPORT_DOCUMENT_BYTES_MAX: usize = 32 << 20;

/// What a node serves about one incident: everything the endpoint needs to know of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportDocument {
    pub format_version: u32,
    /// The node's report id of the incident.
    pub report_id: String,
    pub node: String,
    /// The analysis of the incident's problem on this node.
    pub problem: Problem,
    pub incident: IncidentDetail,
    /// Every kept piece of evidence (`core`, `proc/maps`, `log/…`) and its manifest.
    pub attachments: Vec<(String, Manifest)>,
}

/// A node's report ready to serve: its chunks in order and its whole size.
#[derive(Clone, Debug)]
pub struct NodeReport {
    pub chunk_ids: Vec<ChunkId>,
    pub report_bytes: u64,
    /// The document's blob (pinned in the store until the process ends).
    pub document: BlobId,
}

/// Builds (and stores) the report of one incident of this node; `None` when the store
/// does not know it.
pub fn build_node_report(store: &Store, report_id: &str, node: &str) -> Result<Option<NodeReport>> {
    let Some(incident) = store.incident(report_id)? else {
        return Ok(None);
    };
    let Some(problem) = store.problem(&incident.problem_id)? else {
        return Ok(None);
    };
    let mut attachments = Vec::new();
    let evidence = incident.core.iter().chain(incident.attachments.iter());
    for item in evidence {
        if item.state != EvidenceState::Kept {
            continue;
        }
        if let Some(manifest) = store.manifest(&item.blob)? {
            attachments.push((item.name.clone(), manifest));
        }
    }
    let document = ReportDocument {
        format_version: REPORT_DOCUMENT_VERSION,
        report_id: report_id.to_string(),
        node: node.to_string(),
        problem: problem.problem,
        incident,
        attachments,
    };
    stored_document(store, &document, &document.attachments).map(Some)
}

/// A node report read back from chunks in the store: the document, its own manifest, and
/// how many leading chunks it took.
pub struct ReadReport {
    pub document: ReportDocument,
    pub document_manifest: BlobManifest,
}

/// Reads the document at the head of `chunk_ids` (see the module documentation).
pub fn read_node_report(store: &Store, chunk_ids: &[ChunkId]) -> Result<ReadReport> {
    let (document, document_manifest) = read_document::<ReportDocument>(store, chunk_ids)?;
    if document.format_version != REPORT_DOCUMENT_VERSION {
        bail!(
            "report document version {} (this build reads {REPORT_DOCUMENT_VERSION})",
            document.format_version
        );
    }
    Ok(ReadReport {
        document,
        document_manifest,
    })
}

/// Reads a JSON document at the head of `chunk_ids`, and its own manifest.
pub(crate) fn read_document<T: serde::de::DeserializeOwned>(
    store: &Store,
    chunk_ids: &[ChunkId],
) -> Result<(T, BlobManifest)> {
    let mut bytes = Vec::new();
    let mut chunks = Vec::new();
    for id in chunk_ids {
        let raw = store.chunk_raw(id)?;
        chunks.push((id.to_hex(), raw.len() as u32));
        bytes.extend_from_slice(&raw);
        if bytes.len() > REPORT_DOCUMENT_BYTES_MAX {
            bail!("the document is over {REPORT_DOCUMENT_BYTES_MAX} bytes");
        }
        if let Ok(document) = serde_json::from_slice::<T>(&bytes) {
            return Ok((
                document,
                BlobManifest {
                    blob_id: blake3::hash(&bytes).to_hex().to_string(),
                    len_bytes: bytes.len() as u64,
                    chunks,
                },
            ));
        }
    }
    bail!("the chunks end before the document does")
}

/// A peer's logs of another node's problem window, as the aggregator fetches them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogBundle {
    pub format_version: u32,
    pub bundle_id: String,
    pub node: String,
    pub signature: String,
    pub window_start_ms: u64,
    pub window_end_ms: u64,
    /// The gathered logs (`log/var/log/…`, `journal.export`, `cmd/…`, `notes.txt`).
    pub attachments: Vec<(String, Manifest)>,
}

/// Stores gathered logs and their bundle document; `None` when nothing was gathered.
pub fn build_log_bundle(
    store: &Store,
    bundle_id: &str,
    node: &str,
    signature: &str,
    window: crashmesh_gather::logs::Window,
    gathered: crashmesh_gather::logs::Gathered,
) -> Result<Option<NodeReport>> {
    if gathered.attachments.is_empty() {
        return Ok(None);
    }
    let mut attachments = Vec::new();
    let mut files = gathered.attachments;
    if !gathered.notes.is_empty() {
        files.push((
            "notes.txt".to_string(),
            gathered.notes.join("\n").into_bytes(),
        ));
    }
    for (name, bytes) in files {
        let blob = store.put_blob_bytes(&bytes)?;
        let manifest = store
            .manifest(&blob)?
            .context("a log just stored has no manifest")?;
        attachments.push((name, manifest));
    }
    let document = LogBundle {
        format_version: REPORT_DOCUMENT_VERSION,
        bundle_id: bundle_id.to_string(),
        node: node.to_string(),
        signature: signature.to_string(),
        window_start_ms: window.from_ms,
        window_end_ms: window.to_ms,
        attachments,
    };
    stored_document(store, &document, &document.attachments).map(Some)
}

/// Stores a document (a report or a log bundle) as a blob; its chunks come first in the
/// list a node serves, then every attachment's, in order (what [`read_document`] reads).
fn stored_document(
    store: &Store,
    document: &impl Serialize,
    attachments: &[(String, Manifest)],
) -> Result<NodeReport> {
    let bytes = serde_json::to_vec(document)?;
    let blob = store.put_blob_bytes(&bytes)?;
    let manifest = store
        .manifest(&blob)?
        .context("the document just stored has no manifest")?;
    let mut chunk_ids: Vec<ChunkId> = manifest.chunks.iter().map(|(id, _)| *id).collect();
    let mut report_bytes = manifest.len_bytes;
    for (_, attachment) in attachments {
        chunk_ids.extend(attachment.chunks.iter().map(|(id, _)| *id));
        report_bytes += attachment.len_bytes;
    }
    Ok(NodeReport {
        chunk_ids,
        report_bytes,
        document: blob,
    })
}

/// Store ids to wire ids and back (both are blake3 of the uncompressed chunk).
pub fn to_wire(id: &ChunkId) -> WireChunkId {
    WireChunkId(id.0)
}

/// See [`to_wire`].
pub fn from_wire(id: &WireChunkId) -> ChunkId {
    ChunkId(id.0)
}

/// The consolidated report's id: the same for a problem whatever the aggregator or term.
pub fn consolidated_report_id(cluster_id: &str, signature: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"crashmesh consolidated report v1\0");
    hasher.update(cluster_id.as_bytes());
    hasher.update(b"\0");
    hasher.update(signature.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// A store manifest as the report format names it (hex ids).
pub(crate) fn blob_manifest(manifest: &Manifest) -> BlobManifest {
    BlobManifest {
        blob_id: manifest.blob.to_hex(),
        len_bytes: manifest.len_bytes,
        chunks: manifest
            .chunks
            .iter()
            .map(|(id, len)| (id.to_hex(), *len))
            .collect(),
    }
}

pub(crate) fn incident_of(record: &IncidentRecord) -> Incident {
    Incident {
        node: record.node.as_str().to_string(),
        time_ms: record.time_ms,
        report_id: record.report_id.0.clone(),
        version: None,
        labels: record
            .labels
            .iter()
            .map(|label| (label.key.clone(), label.value.clone()))
            .collect(),
    }
}

/// The announcement of an incident this node recorded: what the aggregator learns first.
/// One place builds it, for a new incident and for one announced again at start; its
/// `report_bytes` is what the incident's kept evidence takes in the store.
pub fn announcement(
    node: &crashmesh_protocol::wire::NodeId,
    labels: &std::collections::BTreeMap<String, String>,
    incident: &IncidentDetail,
    problem: &Problem,
) -> crashmesh_protocol::wire::Announcement {
    use crashmesh_protocol::wire::{Announcement, Label, ReportId, UploadState};
    Announcement {
        report_id: ReportId::new(incident.report_id.clone()),
        signature: problem.signature.clone(),
        kind: problem.kind,
        time_ms: incident.time_ms,
        node: node.clone(),
        report_bytes: incident
            .core
            .iter()
            .chain(incident.attachments.iter())
            .map(|evidence| evidence.len_bytes)
            .sum(),
        labels: labels
            .iter()
            .map(|(key, value)| Label {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        upload_state: UploadState::NotUploaded,
    }
}
