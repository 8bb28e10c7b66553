//! Customer mode (`[privacy] mode = "customer"`): the aggregator scrubs every consolidated
//! report before it leaves the cluster (see the `crashmesh-privacy` crate for the rules).
//!
//! What [`CustomerMode::scrub_manifest`] does to a report:
//! - the problem's texts are scrubbed ([`crashmesh_privacy::scrub_problem`]); signature
//!   and function names stay, so grouping at the endpoint is unchanged;
//! - incidents get pseudonymous node names and report ids (stable: the cluster's key);
//! - attachments: memory dumps (`core`, `vmcore`) are withheld unless `[privacy] cores`
//!   allows them; `proc/environ` keeps only allowlisted values; `proc/cmdline` loses
//!   secrets; every other file (logs, /proc files, peers' logs) is scrubbed line by line.
//!   Scrubbed contents are stored as new blobs in this store, so only their chunks move;
//!   the node's `report.json` document is rebuilt from the scrubbed parts;
//! - the manifest carries `customer_id` and a [`ScrubSummary`] (counts per rule).
//!
//! A core withheld under `cores = "on_request"` is uploaded later, as a second report of
//! the same problem ([`memory_report_id`]), once the endpoint's problem says
//! `core_requested` ([`CustomerMode::answer_core_request`]).
//!
//! The key (`[privacy] key_file`, by default `<data dir>/cluster/privacy.key`, written by
//! `crashmesh cluster init`) must be the same file on every node: it is what makes
//! pseudonyms stable across the cluster. Without it customer mode refuses to upload.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use crashmesh_privacy::{PseudonymKey, ScrubConfig, ScrubCounts, Scrubber};
use crashmesh_protocol::report::{
    Attachment, BlobManifest, IncidentUpdate, ReportManifest, ScrubSummary, is_safe_relative_path,
};
use crashmesh_store::{BlobId, ChunkId, Manifest, Store};
use serde::{Deserialize, Serialize};

use crate::certs::{PRIVACY_KEY_FILE, read_key};
use crate::report::ReportDocument;
use crashmesh_capture::config::ByteSize;

/// Withheld memory dumps remembered for a later core request (oldest forgotten first).
pub const WITHHELD_REPORTS_LEN_MAX: usize = 256;
/// Bytes of one attachment read into memory to be scrubbed; a larger text attachment is
/// withheld (counted in `dropped_attachments`), never sent unscrubbed.
pub const SCRUB_ATTACHMENT_BYTES_MAX: u64 = 256 << 20;

/// `[privacy] mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyMode {
    /// Reports leave as they are (the vendor's own clusters).
    #[default]
    Internal,
    /// Reports are scrubbed before they leave.
    Customer,
}

/// `[privacy] cores`: may memory dumps (cores, vmcores) leave in customer mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorePolicy {
    /// Never.
    #[default]
    Never,
    /// Only for a problem the endpoint asks a core for.
    OnRequest,
    /// Always (the customer agreed to share memory).
    Always,
}

/// `[privacy]`: what may leave the cluster (see `default-config.toml` for each key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    pub mode: PrivacyMode,
    /// The customer's id, sent with every report in customer mode (empty: none).
    pub customer_id: String,
    /// The cluster's pseudonym key; empty means `<data dir>/cluster/privacy.key`.
    pub key_file: PathBuf,
    pub cores: CorePolicy,
    /// Environment variables whose values are kept (`NAME` or `PREFIX*`).
    pub env_allowlist: Vec<String>,
    /// Added rules, tried before the built-in ones.
    pub patterns: Vec<crashmesh_privacy::ExtraPattern>,
    /// Host names always pseudonymized (the cluster's node names always are).
    pub hosts: Vec<String>,
    /// User names always pseudonymized.
    pub users: Vec<String>,
    /// The longest line the log scrubber waits for.
    pub line_bytes_max: ByteSize,
}

impl Default for PrivacyConfig {
    fn default() -> PrivacyConfig {
        let scrub = ScrubConfig::default();
        PrivacyConfig {
            mode: PrivacyMode::Internal,
            customer_id: String::new(),
            key_file: PathBuf::new(),
            cores: CorePolicy::Never,
            env_allowlist: scrub.env_allowlist,
            patterns: Vec::new(),
            hosts: Vec::new(),
            users: Vec::new(),
            line_bytes_max: ByteSize(scrub.line_bytes_max as u64),
        }
    }
}

impl PrivacyConfig {
    /// The key file in effect.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        if self.key_file.as_os_str().is_empty() {
            crate::certs::ClusterPaths::of_data_dir(data_dir)
                .dir
                .join(PRIVACY_KEY_FILE)
        } else {
            self.key_file.clone()
        }
    }
}

/// A memory dump held back from a report, with what is needed to send it on request.
#[derive(Clone, Debug)]
struct Withheld {
    manifest: ReportManifest,
    memory: Vec<Attachment>,
}

/// The aggregator's scrubbing (see the module documentation).
pub struct CustomerMode {
    config: PrivacyConfig,
    /// The key once read. Until it can be read every scrub fails (nothing leaves) and
    /// tries again, so a key installed after the daemon started is picked up.
    key: Mutex<Option<PseudonymKey>>,
    key_path: PathBuf,
    /// Report id → its withheld memory dumps (cores = "on_request" only).
    withheld: Mutex<(
        HashMap<String, Withheld>,
        std::collections::VecDeque<String>,
    )>,
}

/// True for an attachment holding process or kernel memory (`core`, and kdump's `vmcore`,
/// `vmcore.flat`, `vmcore-incomplete`; not `vmcore.json` or `vmcore-dmesg.txt`).
pub fn is_memory_dump(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    matches!(
        base,
        "core" | "vmcore" | "vmcore.flat" | "vmcore-incomplete"
    )
}

/// The id of the second report that carries a problem's withheld core.
pub fn memory_report_id(report_id: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"crashmesh memory report v1\0");
    hasher.update(report_id.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// The content of a blob from its chunks in `store`.
pub fn read_blob_chunks(store: &Store, blob: &BlobManifest) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(blob.len_bytes as usize);
    for (id, _) in &blob.chunks {
        let chunk: ChunkId = id.parse().context("a chunk id")?;
        bytes.extend_from_slice(&store.chunk_raw(&chunk)?);
    }
    Ok(bytes)
}

impl CustomerMode {
    /// Customer mode per `[privacy]`; `None` in internal mode. A missing key or a rule
    /// that does not compile is logged here and makes every scrub fail (the uploader then
    /// retries later): nothing leaves unscrubbed, and uploads start once it is fixed.
    pub fn from_config(config: &PrivacyConfig, data_dir: &Path) -> Result<Option<CustomerMode>> {
        if config.mode == PrivacyMode::Internal {
            return Ok(None);
        }
        let mode = CustomerMode {
            config: config.clone(),
            key: Mutex::new(None),
            key_path: config.key_path(data_dir),
            withheld: Mutex::new(Default::default()),
        };
        // Compiled once now so a bad rule or a missing key is reported at start.
        if let Err(error) = mode.scrubber(&[]) {
            tracing::error!(error = %format!("{error:#}"), "customer mode cannot scrub: nothing is uploaded until this is fixed");
        }
        Ok(Some(mode))
    }

    /// Customer mode with a given key.
    pub fn with_key(config: PrivacyConfig, key: PseudonymKey) -> CustomerMode {
        CustomerMode {
            config,
            key: Mutex::new(Some(key)),
            key_path: PathBuf::new(),
            withheld: Mutex::new(Default::default()),
        }
    }

    /// The cluster's key (read from its file on first use).
    fn key(&self) -> Result<PseudonymKey> {
        let mut key = self.key.lock().unwrap();
        if let Some(key) = key.as_ref() {
            return Ok(key.clone());
        }
        let read = read_key(&self.key_path)?;
        *key = Some(read.clone());
        Ok(read)
    }

    /// `[privacy]` in effect.
    pub fn config(&self) -> &PrivacyConfig {
        &self.config
    }

    /// The scrubber, with `node_names` (and this host's name) pseudonymized wherever
    /// they appear.
    pub fn scrubber(&self, node_names: &[String]) -> Result<Scrubber> {
        let mut hosts = self.config.hosts.clone();
        hosts.extend(node_names.iter().cloned());
        hosts.push(crashmesh_capture::procsnap::host_name());
        hosts.retain(|name| name != "localhost" && !name.is_empty());
        let scrub = ScrubConfig {
            env_allowlist: self.config.env_allowlist.clone(),
            extra_patterns: self.config.patterns.clone(),
            hosts,
            users: self.config.users.clone(),
            line_bytes_max: self.config.line_bytes_max.0 as usize,
        };
        Scrubber::new(&scrub, self.key()?).context("[privacy] rules")
    }

    fn summary(&self, counts: &ScrubCounts, dropped: u64) -> ScrubSummary {
        ScrubSummary {
            mode: "customer".into(),
            replaced: counts.pseudonymized,
            dropped_attachments: dropped,
            removed: counts.removed,
            rules: counts.rules.clone(),
            cores: match self.config.cores {
                CorePolicy::Never => "never",
                CorePolicy::OnRequest => "on_request",
                CorePolicy::Always => "always",
            }
            .into(),
        }
    }

    /// Scrubs a consolidated report before upload (see the module documentation).
    /// Scrubbed attachments are stored in `store`; the result has been validated.
    pub fn scrub_manifest(
        &self,
        store: &Store,
        manifest: ReportManifest,
    ) -> Result<ReportManifest> {
        let (scrubbed, memory) = self.scrub_parts(store, manifest, false)?;
        if !memory.is_empty() && self.config.cores == CorePolicy::OnRequest {
            let mut withheld = self.withheld.lock().unwrap();
            let (by_report, order) = &mut *withheld;
            if !by_report.contains_key(&scrubbed.report_id) {
                order.push_back(scrubbed.report_id.clone());
                while order.len() > WITHHELD_REPORTS_LEN_MAX {
                    if let Some(oldest) = order.pop_front() {
                        by_report.remove(&oldest);
                    }
                }
            }
            by_report.insert(
                scrubbed.report_id.clone(),
                Withheld {
                    manifest: scrubbed.clone(),
                    memory,
                },
            );
        }
        Ok(scrubbed)
    }

    /// The scrubbed report and the memory dumps withheld from it (renamed as they would
    /// be sent); with `keep_memory`, every memory dump is kept whatever the policy.
    fn scrub_parts(
        &self,
        store: &Store,
        mut manifest: ReportManifest,
        keep_memory: bool,
    ) -> Result<(ReportManifest, Vec<Attachment>)> {
        let mut node_names: Vec<String> = manifest
            .incidents
            .iter()
            .map(|incident| incident.node.clone())
            .collect();
        node_names.extend(manifest.attachments.iter().filter_map(|attachment| {
            attachment
                .name
                .split_once('/')
                .map(|(node, _)| node.to_string())
        }));
        node_names.sort();
        node_names.dedup();
        let scrubber = self.scrubber(&node_names)?;
        let mut counts = ScrubCounts::default();
        crashmesh_privacy::scrub_problem(&scrubber, &mut manifest.problem, &mut counts);
        for incident in &mut manifest.incidents {
            crashmesh_privacy::scrub_incident(&scrubber, incident, &mut counts);
        }
        let send_memory = keep_memory || self.config.cores == CorePolicy::Always;
        let mut dropped = 0u64;
        let mut withheld = Vec::new();
        // Original blob id → the scrubbed blob's manifest (for the report documents).
        let mut replaced: HashMap<String, Manifest> = HashMap::new();
        let mut kept: Vec<(String, Attachment)> = Vec::new();
        let mut documents: Vec<(String, Attachment)> = Vec::new();
        for (index, attachment) in manifest.attachments.iter().enumerate() {
            let (node, rest) = attachment
                .name
                .split_once('/')
                .unwrap_or(("", attachment.name.as_str()));
            let name = self.attachment_name(&scrubber, node, rest, index, &mut counts);
            if rest == "report.json" {
                documents.push((name, attachment.clone()));
                continue;
            }
            if is_memory_dump(rest) {
                let renamed = Attachment {
                    name,
                    blob: attachment.blob.clone(),
                };
                if send_memory {
                    kept.push((attachment.blob.blob_id.clone(), renamed));
                } else {
                    dropped += 1;
                    withheld.push(renamed);
                }
                continue;
            }
            if attachment.blob.len_bytes > SCRUB_ATTACHMENT_BYTES_MAX {
                tracing::warn!(attachment = %attachment.name, bytes = attachment.blob.len_bytes, "too large to scrub; withheld");
                dropped += 1;
                continue;
            }
            let bytes = read_blob_chunks(store, &attachment.blob)
                .with_context(|| format!("reading attachment {}", attachment.name))?;
            let scrubbed = self.scrub_file(&scrubber, rest, &bytes, &mut counts);
            let manifest = stored_manifest(store, &scrubbed)?;
            replaced.insert(attachment.blob.blob_id.clone(), manifest.clone());
            kept.push((
                attachment.blob.blob_id.clone(),
                Attachment {
                    name,
                    blob: crate::report::blob_manifest(&manifest),
                },
            ));
        }
        let mut attachments = Vec::new();
        for (name, attachment) in documents {
            let bytes = read_blob_chunks(store, &attachment.blob).context("reading report.json")?;
            let document: ReportDocument =
                serde_json::from_slice(&bytes).context("report.json is not a report document")?;
            let document =
                self.scrub_document(&scrubber, document, &replaced, send_memory, &mut counts);
            let manifest = stored_manifest(store, &serde_json::to_vec(&document)?)?;
            attachments.push(Attachment {
                name,
                blob: crate::report::blob_manifest(&manifest),
            });
        }
        attachments.extend(kept.into_iter().map(|(_, attachment)| attachment));
        manifest.attachments = attachments;
        if !self.config.customer_id.is_empty() {
            manifest.customer_id = Some(self.config.customer_id.clone());
        }
        manifest.scrub = Some(self.summary(&counts, dropped));
        manifest.validate().context("the scrubbed report")?;
        Ok((manifest, withheld))
    }

    fn attachment_name(
        &self,
        scrubber: &Scrubber,
        node: &str,
        rest: &str,
        index: usize,
        counts: &mut ScrubCounts,
    ) -> String {
        let rest_scrubbed = scrubber.scrub_text(rest, counts);
        let name = if node.is_empty() {
            rest_scrubbed
        } else {
            format!(
                "{}/{rest_scrubbed}",
                crashmesh_privacy::node_pseudonym(scrubber, node)
            )
        };
        if is_safe_relative_path(&name, crashmesh_protocol::report::NAME_BYTES_MAX * 4) {
            name
        } else {
            format!("attachment-{index}")
        }
    }

    /// One file's content, scrubbed by its kind.
    pub fn scrub_file(
        &self,
        scrubber: &Scrubber,
        name: &str,
        bytes: &[u8],
        counts: &mut ScrubCounts,
    ) -> Vec<u8> {
        if name == "proc/environ" || name.ends_with("/environ") {
            scrubber.scrub_environ(bytes, counts)
        } else if name == "proc/cmdline" || name.ends_with("/cmdline") {
            scrubber.scrub_cmdline(bytes, counts)
        } else {
            let mut out = Vec::with_capacity(bytes.len());
            let mut lines = scrubber.lines();
            lines.push(bytes, &mut out);
            counts.merge(&lines.finish(&mut out));
            out
        }
    }

    fn scrub_document(
        &self,
        scrubber: &Scrubber,
        mut document: ReportDocument,
        replaced: &HashMap<String, Manifest>,
        send_memory: bool,
        counts: &mut ScrubCounts,
    ) -> ReportDocument {
        document.node = crashmesh_privacy::node_pseudonym(scrubber, &document.node);
        document.report_id = crashmesh_privacy::report_id_pseudonym(scrubber, &document.report_id);
        crashmesh_privacy::scrub_problem(scrubber, &mut document.problem, counts);
        let incident = &mut document.incident;
        incident.node = document.node.clone();
        incident.report_id = document.report_id.clone();
        scrubber.scrub_option(&mut incident.executable, counts);
        for value in incident.labels.values_mut() {
            *value = scrubber.scrub_text(value, counts);
        }
        if !send_memory {
            incident.core = None;
        }
        let scrub_name = |name: &str, counts: &mut ScrubCounts| scrubber.scrub_text(name, counts);
        let mut evidence = Vec::new();
        for mut item in std::mem::take(&mut incident.attachments) {
            if let Some(manifest) = replaced.get(&item.blob.to_hex()) {
                item.blob = manifest.blob;
                item.len_bytes = manifest.len_bytes;
                item.name = scrub_name(&item.name, counts);
                evidence.push(item);
            } else if send_memory && is_memory_dump(&item.name) {
                evidence.push(item);
            }
        }
        incident.attachments = evidence;
        let mut attachments = Vec::new();
        for (name, manifest) in std::mem::take(&mut document.attachments) {
            if let Some(scrubbed) = replaced.get(&manifest.blob.to_hex()) {
                attachments.push((scrub_name(&name, counts), scrubbed.clone()));
            } else if send_memory && is_memory_dump(&name) {
                attachments.push((name, manifest));
            }
        }
        document.attachments = attachments;
        document
    }

    /// Scrubs an incident update (node names and report ids as in the report).
    pub fn scrub_update(&self, mut update: IncidentUpdate) -> Result<IncidentUpdate> {
        let names: Vec<String> = update
            .incidents
            .iter()
            .map(|incident| incident.node.clone())
            .collect();
        let scrubber = self.scrubber(&names)?;
        let mut counts = ScrubCounts::default();
        for incident in &mut update.incidents {
            crashmesh_privacy::scrub_incident(&scrubber, incident, &mut counts);
        }
        update.validate().context("the scrubbed update")?;
        Ok(update)
    }

    /// After a report or update of `report_id` reached the endpoint: when a core was
    /// withheld from it (`cores = "on_request"`) and the endpoint's problem asks for one,
    /// uploads it as a second report of the problem (the report's attachments plus the
    /// memory dumps; only the dumps' chunks move). Gives the request bodies' bytes sent.
    pub fn answer_core_request(
        &self,
        client: &crashmesh_endpoint_client::Client,
        store: &Store,
        report_id: &str,
        problem_id: &str,
    ) -> Result<u64> {
        let Some(withheld) = self.withheld.lock().unwrap().0.get(report_id).cloned() else {
            return Ok(0);
        };
        let answer = client
            .get(&format!("/api/v1/problems/{problem_id}"))
            .context("asking the endpoint whether it wants the core")?;
        if answer.status != 200 || answer.json()["core_requested"] != true {
            return Ok(0);
        }
        let mut manifest = withheld.manifest.clone();
        manifest.report_id = memory_report_id(report_id);
        manifest.attachments.extend(withheld.memory.iter().cloned());
        if let Some(scrub) = manifest.scrub.as_mut() {
            scrub.dropped_attachments = 0;
        }
        manifest.validate().context("the memory report")?;
        let mut chunks = Vec::new();
        let mut bytes_sent = 0u64;
        for attachment in &withheld.memory {
            for (id, _) in &attachment.blob.chunks {
                let chunk: ChunkId = id.parse().context("a chunk id")?;
                let compressed = store.chunk_bytes(&chunk)?;
                bytes_sent += compressed.len() as u64;
                chunks.push(crashmesh_endpoint_client::ChunkData {
                    id: id.clone(),
                    compressed,
                });
            }
        }
        client
            .upload(&manifest, &chunks)
            .context("uploading the requested core")?;
        bytes_sent += serde_json::to_vec(&manifest)?.len() as u64;
        self.withheld.lock().unwrap().0.remove(report_id);
        tracing::info!(report = %manifest.report_id, problem = %problem_id, "requested core uploaded (cores = on_request)");
        Ok(bytes_sent)
    }
}

/// The uploader's call after an acknowledged upload of `report_id`: answers a core
/// request if there is one (see [`CustomerMode::answer_core_request`]); gives the bytes
/// sent. Failures are logged: the core is asked again at the next incident.
pub fn core_request_after_ack(
    customer: Option<&CustomerMode>,
    client: &crashmesh_endpoint_client::Client,
    store: &Store,
    report_id: &str,
    reply: Option<&crashmesh_protocol::report::UploadReply>,
) -> u64 {
    let (Some(customer), Some(reply)) = (customer, reply) else {
        return 0;
    };
    match customer.answer_core_request(client, store, report_id, &reply.problem_id) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), report = %report_id, "the requested core was not uploaded; asked again at the next incident");
            0
        }
    }
}

fn stored_manifest(store: &Store, bytes: &[u8]) -> Result<Manifest> {
    let blob: BlobId = store.put_blob_bytes(bytes)?;
    store
        .manifest(&blob)?
        .context("a scrubbed blob just stored has no manifest")
}

/// What `crashmesh privacy preview` prints: the report as it would leave, and the
/// scrubbed text of each attachment (cut at `text_bytes_max`).
#[derive(Debug, Serialize)]
pub struct Preview {
    pub mode: PrivacyMode,
    pub manifest: ReportManifest,
    /// Attachment name → its scrubbed content (lossy UTF-8, cut), memory dumps excluded.
    pub texts: BTreeMap<String, String>,
}

/// The consolidated report of one incident of this node's store, before scrubbing, as the
/// aggregator builds it when the incident is the problem's first (peers' logs are not
/// fetched here).
pub fn local_manifest(
    store: &Store,
    report_id: &str,
    node: &str,
    cluster_id: &str,
) -> Result<ReportManifest> {
    let Some(report) = crate::report::build_node_report(store, report_id, node)? else {
        bail!("no incident {report_id} in this store");
    };
    let read = crate::report::read_node_report(store, &report.chunk_ids)?;
    let mut attachments = vec![Attachment {
        name: format!("{node}/report.json"),
        blob: read.document_manifest,
    }];
    for (name, manifest) in &read.document.attachments {
        attachments.push(Attachment {
            name: format!("{node}/{name}"),
            blob: crate::report::blob_manifest(manifest),
        });
    }
    let problem = read.document.problem.clone();
    let manifest = ReportManifest {
        format_version: crashmesh_protocol::report::REPORT_FORMAT_VERSION,
        report_id: crate::report::consolidated_report_id(cluster_id, &problem.signature),
        cluster_id: cluster_id.to_string(),
        term: 0,
        customer_id: None,
        signature: problem.signature.clone(),
        kind: problem.kind,
        problem,
        incidents: vec![crashmesh_protocol::report::Incident {
            node: node.to_string(),
            time_ms: read.document.incident.time_ms,
            report_id: report_id.to_string(),
            version: None,
            labels: read.document.incident.labels.clone(),
        }],
        attachments,
        scrub: None,
        created_ms: crashmesh_capture::clock::now_ms(),
    };
    manifest.validate().context("the report")?;
    Ok(manifest)
}

/// The report of one incident of this node's store as it would leave the cluster under
/// `config` (see [`local_manifest`]).
pub fn preview(
    store: &Store,
    config: &PrivacyConfig,
    data_dir: &Path,
    report_id: &str,
    node: &str,
    cluster_id: &str,
    text_bytes_max: usize,
) -> Result<Preview> {
    let manifest = local_manifest(store, report_id, node, cluster_id)?;
    let manifest = match CustomerMode::from_config(config, data_dir)? {
        Some(customer) => {
            customer.scrubber(&[])?;
            customer.scrub_parts(store, manifest, false)?.0
        }
        None => manifest,
    };
    let mut texts = BTreeMap::new();
    for attachment in &manifest.attachments {
        if is_memory_dump(&attachment.name) {
            continue;
        }
        let mut bytes = read_blob_chunks(store, &attachment.blob)?;
        bytes.truncate(text_bytes_max);
        texts.insert(
            attachment.name.clone(),
            String::from_utf8_lossy(&bytes).replace('\0', " "),
        );
    }
    Ok(Preview {
        mode: config.mode,
        manifest,
        texts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::new_key_text;
    use crashmesh_privacy::NameClass;
    use crashmesh_protocol::model::{Problem, ProblemKind};
    use crashmesh_store::{NewIncident, StoreConfig};

    const CANARY_ENV: &str = "canary-env-5150";
    const CANARY_LOG: &str = "canary-log-8086";

    /// A store with one incident of node `db7` holding a core, an environ, a cmdline and
    /// a log, each with a planted secret or name.
    fn store_with_incident(dir: &Path) -> Store {
        let store = Store::open(dir, StoreConfig::default()).unwrap();
        let mut core = b"\x7fELF".to_vec();
        core.extend(std::iter::repeat_n(7u8, 200_000));
        let core = store.put_blob_bytes(&core).unwrap();
        let environ = store
            .put_blob_bytes(format!("PATH=/bin\0API_KEY={CANARY_ENV}\0").as_bytes())
            .unwrap();
        let cmdline = store
            .put_blob_bytes(b"/srv/app\0--password\0canary-cli-6502\0")
            .unwrap();
        let log = store
            .put_blob_bytes(
                format!(
                    "Nov 26 12:00:01 db7 app[42]: token={CANARY_LOG} from 10.20.30.40 for ops@corp.example.com\n"
                )
                .as_bytes(),
            )
            .unwrap();
        let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV in parse (db7)");
        problem.signature = "v1:1111111111111111111111111111111111111111".into();
        problem.executable = Some("/home/alice/app".into());
        store
            .record_incident(NewIncident {
                report_id: "db7:1-2-3".into(),
                time_ms: 1_700_000_000_000,
                node: "db7".into(),
                problem,
                executable: Some("/home/alice/app".into()),
                pid: Some(42),
                uid: Some(0),
                signal: Some(11),
                core: Some(core),
                core_truncated: false,
                attachments: vec![
                    ("proc/environ".into(), environ),
                    ("proc/cmdline".into(), cmdline),
                    ("log/var/log/app.log".into(), log),
                ],
                labels: Default::default(),
            })
            .unwrap();
        store
    }

    fn all_chunks(
        store: &Store,
        manifest: &ReportManifest,
    ) -> Vec<crashmesh_endpoint_client::ChunkData> {
        manifest
            .chunk_ids()
            .into_iter()
            .map(|id| crashmesh_endpoint_client::ChunkData {
                id: id.to_string(),
                compressed: store.chunk_bytes(&id.parse().unwrap()).unwrap(),
            })
            .collect()
    }

    #[test]
    fn scrubbed_report_at_the_endpoint_then_the_core_only_when_requested() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_incident(&dir.path().join("node"));
        let endpoint_dir = dir.path().join("endpoint");
        let token = {
            let db = crashmesh_endpoint::storage::Db::open(&endpoint_dir).unwrap();
            crashmesh_endpoint::http::auth::create_cluster_token(&db, "c1").unwrap()
        };
        let server = crashmesh_endpoint::start(
            crashmesh_endpoint::EndpointConfig {
                listen: "127.0.0.1:0".into(),
                data_dir: endpoint_dir.clone(),
                workers: 2,
                ..Default::default()
            },
            crashmesh_endpoint::ServerMode::Real,
        )
        .unwrap();
        let client = crashmesh_endpoint_client::Client::new(&server.url, &token);
        let admin = crashmesh_endpoint_client::Client::new(&server.url, &server.admin_token);
        let config = PrivacyConfig {
            mode: PrivacyMode::Customer,
            customer_id: "acme".into(),
            cores: CorePolicy::OnRequest,
            ..PrivacyConfig::default()
        };
        let key = PseudonymKey::from_bytes([9; 32]);
        let customer = CustomerMode::with_key(config, key.clone());

        let original = local_manifest(&store, "db7:1-2-3", "db7", "c1").unwrap();
        let scrubbed = customer.scrub_manifest(&store, original.clone()).unwrap();
        assert_eq!(scrubbed.signature, original.signature);
        let host = key.pseudonym(NameClass::Host, "db7");
        assert_eq!(scrubbed.incidents[0].node, host);
        assert_eq!(scrubbed.incidents[0].report_id, format!("{host}:1-2-3"));
        assert!(
            scrubbed
                .attachments
                .iter()
                .all(|a| !is_memory_dump(&a.name))
        );
        let summary = scrubbed.scrub.clone().unwrap();
        assert_eq!(summary.dropped_attachments, 1);
        for rule in [
            "env_value",
            "secret_argument",
            "secret_value",
            "ipv4_address",
            "email",
            "syslog_host",
        ] {
            assert!(
                summary.rules.get(rule).copied().unwrap_or(0) > 0,
                "{rule}: {summary:?}"
            );
        }
        // Pseudonyms are stable: a second scrub (another aggregator, same key) agrees.
        let again = CustomerMode::with_key(customer.config().clone(), key.clone())
            .scrub_manifest(&store, original)
            .unwrap();
        assert_eq!(again.incidents, scrubbed.incidents);
        assert_eq!(again.attachments, scrubbed.attachments);

        let reply = client
            .upload(&scrubbed, &all_chunks(&store, &scrubbed))
            .unwrap();
        // Not requested yet: nothing more goes up.
        assert_eq!(
            customer
                .answer_core_request(&client, &store, &scrubbed.report_id, &reply.problem_id)
                .unwrap(),
            0
        );
        let problem = client
            .get(&format!("/api/v1/problems/{}", reply.problem_id))
            .unwrap()
            .json();
        assert_eq!(problem["core_requested"], false);
        assert_eq!(problem["privacy"]["customers"], serde_json::json!(["acme"]));
        assert_eq!(
            problem["privacy"]["reports"][0]["scrub"]["rules"]["env_value"],
            1
        );
        assert_eq!(problem["nodes"], serde_json::json!([host]));
        let page = client
            .get(&format!("/problems/{}", reply.problem_id))
            .unwrap()
            .body;
        assert!(
            page.contains("id=\"privacy\"") && page.contains("acme") && page.contains("env_value")
        );
        // The request is the admin's: its page offers it, the cluster's does not.
        assert!(!page.contains("request a core"), "{page}");
        let page = admin
            .get(&format!("/problems/{}", reply.problem_id))
            .unwrap()
            .body;
        assert!(
            page.contains("request a core"),
            "the page offers the request"
        );
        // Only the admin may ask for a core, through the page's form or the API.
        let form = |token: &str| {
            use std::io::{Read as _, Write as _};
            let address = server.url.trim_start_matches("http://");
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            let body = "requested=yes";
            write!(
                stream,
                "POST /problems/{}/core-request HTTP/1.0\r\nHost: x\r\n\
                 Authorization: Bearer {token}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                reply.problem_id,
                body.len()
            )
            .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        assert!(
            form("wrong").starts_with("HTTP/1.0 401"),
            "{}",
            form("wrong")
        );
        let path = format!("/api/v1/problems/{}/core-request", reply.problem_id);
        assert_eq!(
            client
                .post(&path, br#"{"requested": true}"#)
                .unwrap()
                .status,
            401
        );
        assert_eq!(
            admin.post(&path, br#"{"requested": true}"#).unwrap().status,
            200
        );
        let sent = customer
            .answer_core_request(&client, &store, &scrubbed.report_id, &reply.problem_id)
            .unwrap();
        assert!(sent > 1000, "the core went up: {sent}");
        let problem = client
            .get(&format!("/api/v1/problems/{}", reply.problem_id))
            .unwrap()
            .json();
        assert_eq!(problem["core_requested"], true);
        // The page's form with the admin token sets it too, and the page says so.
        assert!(form(&server.admin_token).starts_with("HTTP/1.0 303"));
        let page = admin
            .get(&format!("/problems/{}", reply.problem_id))
            .unwrap()
            .body;
        assert!(page.contains("stop asking for a core"), "{page}");
        assert_eq!(
            problem["count"], 1,
            "the core report adds no incident: {problem}"
        );
        let names: Vec<&str> = problem["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&format!("{host}/core").as_str()),
            "{names:?}"
        );
        // Answered once: the withheld core is forgotten.
        assert_eq!(
            customer
                .answer_core_request(&client, &store, &scrubbed.report_id, &reply.problem_id)
                .unwrap(),
            0
        );
        server.stop();

        // Everything the endpoint stored, read back: no planted secret, no node name.
        let out = dir.path().join("export");
        crashmesh_endpoint::export::export(
            &crashmesh_endpoint::EndpointConfig {
                data_dir: endpoint_dir,
                ..Default::default()
            },
            &out,
        )
        .unwrap();
        let mut stack = vec![out];
        let mut scanned = 0;
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            scanned += 1;
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for needle in [
                CANARY_ENV,
                CANARY_LOG,
                "canary-cli",
                "10.20.30.40",
                "ops@corp",
                "alice",
                "db7",
            ] {
                assert!(!text.contains(needle), "{needle} in {}", path.display());
            }
        }
        assert!(scanned >= 6, "{scanned} files exported");
    }

    #[test]
    fn internal_mode_scrubs_nothing_and_a_missing_key_refuses_customer_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            CustomerMode::from_config(&PrivacyConfig::default(), dir.path())
                .unwrap()
                .is_none()
        );
        let customer = PrivacyConfig {
            mode: PrivacyMode::Customer,
            ..PrivacyConfig::default()
        };
        // Without its key customer mode scrubs nothing, so nothing can leave...
        let mode = CustomerMode::from_config(&customer, dir.path())
            .unwrap()
            .unwrap();
        let error = mode.scrubber(&[]).err().unwrap();
        assert!(format!("{error:#}").contains("privacy.key"), "{error:#}");
        let update = IncidentUpdate {
            report_id: "ab".repeat(32),
            cluster_id: "c1".into(),
            term: 1,
            signature: "v1:x".into(),
            incidents: vec![crashmesh_protocol::report::Incident {
                node: "node-1".into(),
                time_ms: 1,
                report_id: "node-1:1".into(),
                version: None,
                labels: Default::default(),
            }],
        };
        assert!(mode.scrub_update(update.clone()).is_err());
        // ... until the key is installed, which the running mode picks up.
        let key_dir = dir.path().join("cluster");
        std::fs::create_dir_all(&key_dir).unwrap();
        std::fs::write(key_dir.join(PRIVACY_KEY_FILE), new_key_text().unwrap()).unwrap();
        let scrubbed = mode.scrub_update(update).unwrap();
        assert!(scrubbed.incidents[0].node.starts_with("host-"));
        assert!(is_memory_dump("node-1/core") && is_memory_dump("vmcore"));
        assert!(!is_memory_dump("vmcore.json") && !is_memory_dump("proc/coredump_filter"));
        assert!(!is_memory_dump(
            "node-2/peer-logs/log/var/crash/1/vmcore-dmesg.txt"
        ));
        assert!(is_memory_dump("node-2/vmcore-incomplete"));
    }
}
