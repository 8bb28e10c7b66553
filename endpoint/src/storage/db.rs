//! The metadata database (redb, format version 1): tokens, cluster terms, reports,
//! problems, incidents and bugs.
//!
//! Keys are redb-native; rows are postcard. One process has the database (redb's
//! exclusive-writer mode): the server, or a CLI command while no server runs. The CLI's
//! requests while the server runs (`token create`, `bug …`, `core-request`, `export`) go
//! through the server's socket, which answers them the same way (`crate::local`).
//! Ingest batches commit without a sync; the ingest journal makes them durable
//! ([`super::journal`]). [`Db::open`] opens the tables alone: the recording layer replays
//! what a crash left in the journal (`recording::replay::open_database`).
//!
//! Invariants: a report row, its incidents, its problem's counters, its bug and its
//! cluster's term are written in one transaction; every set kept on a row is bounded
//! (the `*_MAX` constants), counts stay exact beyond them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use crashmesh_protocol::report::{BugRef, ReportManifest};
use crashmesh_protocol::{Problem, ProblemKind};
use redb::{MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::EndpointError;

/// The metadata format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// Names kept per problem (nodes, clusters, versions, labels), each.
pub const NAMES_PER_PROBLEM_MAX: usize = 4096;
/// Recent incidents kept on a problem's row for its page.
pub const RECENT_INCIDENTS_MAX: usize = 50;
/// Report ids kept on a problem's row.
pub const REPORTS_PER_PROBLEM_MAX: usize = 256;
/// Hour buckets kept for a problem's chart (about 13 months).
pub const HOURS_PER_PROBLEM_MAX: usize = 24 * 400;
/// Comments kept on a bug; the oldest go first.
pub const COMMENTS_PER_BUG_MAX: usize = 1000;

/// Counters and the format version, by name.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
/// blake3 of a token (hex) → its cluster.
pub(crate) const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens_v1");
/// Cluster → the highest term admitted.
pub(crate) const TERMS: TableDefinition<&str, u64> = TableDefinition::new("terms_v1");
/// Report id → [`ReportRow`].
pub(crate) const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports_v1");
/// Problem id → [`ProblemRow`].
pub(crate) const PROBLEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("problems_v1");
/// Problem id → its analysis ([`Problem`], re-symbolized).
pub(crate) const ANALYSES: TableDefinition<&str, &[u8]> = TableDefinition::new("analyses_v1");
/// (cluster, the node's incident report id) → problem id: an incident counts once.
pub(crate) const INCIDENTS: TableDefinition<(&str, &str), &str> =
    TableDefinition::new("incidents_v1");
/// Bug number → [`BugRow`].
pub(crate) const BUGS: TableDefinition<u64, &[u8]> = TableDefinition::new("bugs_v1");
/// (bug number, comment number) → [`Comment`]: appended, so a hot bug's row stays small.
pub(crate) const COMMENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("comments_v1");
/// (cluster, problem id) → [`ProblemRow`] of that cluster's reports and incidents alone:
/// what a cluster's token sees of a problem (its bug and interest come from the problem's
/// row, see [`Db::problem_view`]).
pub(crate) const CLUSTER_PROBLEMS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("cluster_problems_v1");
/// (cluster, problem id) → the analysis ([`Problem`]) of the cluster's first report of it.
pub(crate) const CLUSTER_ANALYSES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("cluster_analyses_v1");
/// (cluster, chunk id): the chunks a stored report of the cluster names. A chunk counts as
/// present for a cluster only when listed here (or uploaded by it for a pending report), so
/// whether another cluster stored a chunk is never told.
pub(crate) const CLUSTER_CHUNKS: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("cluster_chunks_v1");
/// Chunk id (hex) → (pack number, offset of the zstd frame, its length): where a chunk of
/// the local pack files is ([`super::packs`]).
pub(crate) const CHUNKS: TableDefinition<&str, (u64, u64, u32)> = TableDefinition::new("chunks_v1");
/// Problems a person asked a core for: problem id → when (ms). Clusters in customer mode
/// with `cores = "on_request"` send the withheld core of such a problem.
pub(crate) const CORE_REQUESTS: TableDefinition<&str, u64> =
    TableDefinition::new("core_requests_v1");

/// Problem id → [`SimilarKeys`] of its first report's analysis (`protocol::similarity`).
pub(crate) const SIMILAR_KEYS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("similar_keys_v1");
/// (kind, frame key) → the problems indexed under it: each problem under its first
/// `protocol::similarity::INDEX_KEYS` keys.
pub(crate) const SIMILAR_INDEX: MultimapTableDefinition<(&str, &str), &str> =
    MultimapTableDefinition::new("similar_index_v1");
/// Problem id → the problem it was merged into, always the last one (merging that one
/// in turn updates every id merged into it).
pub(crate) const MERGED: TableDefinition<&str, &str> = TableDefinition::new("merged_v1");
/// Set once every problem's analysis is in [`SIMILAR_INDEX`] (databases older than the
/// index are indexed once, when opened).
pub(crate) const META_SIMILAR_INDEXED: &str = "similar_indexed";
/// Problems read per index key when looking for similar problems: a key shared by many
/// problems (`main`) costs this many at most.
pub const SIMILAR_CANDIDATES_PER_KEY: usize = 256;
/// Similar problems listed at most.
pub const SIMILAR_SHOWN_MAX: usize = 10;

const META_FORMAT_VERSION: &str = "format_version";
pub(crate) const META_NEXT_BUG: &str = "next_bug";
/// The last ingest batch committed ([`super::journal`]).
pub(crate) const META_JOURNAL_SEQ: &str = "journal_seq";

/// Who a read speaks for: what the `*_view` functions show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// The admin token: every cluster's data, and the writes.
    Admin,
    /// A cluster's token: that cluster's data only.
    Cluster(String),
}

impl Viewer {
    /// The cluster whose data this viewer is limited to; `None` for the admin.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Viewer::Admin => None,
            Viewer::Cluster(cluster) => Some(cluster),
        }
    }

    /// True for the admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Viewer::Admin)
    }
}

/// A stored report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportRow {
    /// The manifest as received.
    pub manifest: ReportManifest,
    /// The problem it was grouped into.
    pub problem_id: String,
    /// When it was completed (server clock, ms).
    pub received_ms: u64,
}

impl ReportRow {
    /// The encoding of a `ReportRow` of these parts, without copying the manifest.
    pub fn encode_parts(
        manifest: &ReportManifest,
        problem_id: &str,
        received_ms: u64,
    ) -> Result<Vec<u8>, EndpointError> {
        ReportRow::with_encoded_parts(
            manifest,
            problem_id,
            received_ms,
            |bytes| Ok(bytes.to_vec()),
        )
    }

    /// [`ReportRow::encode_parts`], the bytes lent to `use_bytes` (see [`encode_with`]).
    pub(crate) fn with_encoded_parts<R>(
        manifest: &ReportManifest,
        problem_id: &str,
        received_ms: u64,
        use_bytes: impl FnOnce(&[u8]) -> Result<R, EndpointError>,
    ) -> Result<R, EndpointError> {
        /// `ReportRow`'s fields by reference: postcard writes the same bytes.
        #[derive(Serialize)]
        struct Parts<'a> {
            manifest: &'a ReportManifest,
            problem_id: &'a str,
            received_ms: u64,
        }
        let parts = Parts {
            manifest,
            problem_id,
            received_ms,
        };
        encode_with(&parts, use_bytes)
    }
}

/// One incident as a problem's page lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRow {
    pub cluster: String,
    pub node: String,
    pub time_ms: u64,
    pub report_id: String,
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// What similarity is measured on: a problem's kind and its frame keys
/// (`crashmesh_protocol::similarity::frame_keys`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimilarKeys {
    /// The kind's stable name: problems of different kinds are never similar.
    pub kind: String,
    pub keys: Vec<String>,
}

impl SimilarKeys {
    pub fn of(problem: &Problem) -> SimilarKeys {
        SimilarKeys {
            kind: problem.kind.as_str().to_string(),
            keys: crashmesh_protocol::similarity::frame_keys(problem),
        }
    }
}

/// A problem like another, and how far from it (0: the same frames; 1: none alike).
#[derive(Clone, Debug)]
pub struct Similar {
    pub row: ProblemRow,
    pub distance: f64,
}

/// A problem: its counters and the names seen with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProblemRow {
    pub id: String,
    pub signature: String,
    pub kind: ProblemKind,
    /// One line: the first report's reason.
    pub reason: String,
    pub crash_function: Option<String>,
    pub executable: Option<String>,
    /// Incidents, exact.
    pub count: u64,
    pub nodes: BTreeSet<String>,
    pub clusters: BTreeSet<String>,
    pub versions: BTreeSet<String>,
    /// `key=value` of every incident label.
    pub labels: BTreeSet<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    /// False when a rule marked it uninteresting (kept and counted, hidden by default).
    pub interesting: bool,
    /// The rule that did, as written.
    pub uninteresting_rule: Option<String>,
    pub bug: Option<u64>,
    /// The reports grouped into it, oldest first (bounded).
    pub reports: Vec<String>,
    /// Incidents per hour (hours since the epoch), for the chart.
    pub hourly: BTreeMap<u64, u64>,
    /// The latest incidents, newest last (added with `ProblemRow::push_recent`).
    pub recent: VecDeque<IncidentRow>,
    /// `recent`'s encodings, kept in step by [`ProblemRow::push_recent`] (rebuilt when
    /// not): the committer encodes a hot problem's row every batch, and encoding its
    /// incidents again each time was two thirds of that (a quarter of the committer's
    /// time).
    #[serde(skip)]
    pub(crate) recent_encoded: VecDeque<Vec<u8>>,
}

impl ProblemRow {
    /// This row (a cluster's own) with what the problem shares across clusters taken from
    /// `global`, the problem's whole row: its bug and whether it is interesting.
    pub fn with_shared_fields_of(mut self, global: &ProblemRow) -> ProblemRow {
        self.bug = global.bug;
        self.interesting = global.interesting;
        self.uninteresting_rule = global.uninteresting_rule.clone();
        self
    }

    /// Adds an incident to `recent`, dropping the oldest past [`RECENT_INCIDENTS_MAX`].
    pub(crate) fn push_recent(&mut self, incident: IncidentRow) -> Result<(), EndpointError> {
        if self.recent_encoded.len() == self.recent.len() {
            self.recent_encoded.push_back(encode(&incident)?);
        }
        self.recent.push_back(incident);
        while self.recent.len() > RECENT_INCIDENTS_MAX {
            self.recent.pop_front();
            if self.recent_encoded.len() > self.recent.len() {
                self.recent_encoded.pop_front();
            }
        }
        Ok(())
    }

    /// The row's encoding (the bytes `postcard` gives for it) lent to `use_bytes`, with
    /// its incidents' kept encodings.
    pub(crate) fn encode_with<R>(
        &mut self,
        use_bytes: impl FnOnce(&[u8]) -> Result<R, EndpointError>,
    ) -> Result<R, EndpointError> {
        /// The fields before `recent`, by reference, in order: postcard writes a struct as
        /// its fields one after another, and a sequence as its length, then its items.
        #[derive(Serialize)]
        struct Head<'a> {
            id: &'a str,
            signature: &'a str,
            kind: ProblemKind,
            reason: &'a str,
            crash_function: &'a Option<String>,
            executable: &'a Option<String>,
            count: u64,
            nodes: &'a BTreeSet<String>,
            clusters: &'a BTreeSet<String>,
            versions: &'a BTreeSet<String>,
            labels: &'a BTreeSet<String>,
            first_seen: u64,
            last_seen: u64,
            interesting: bool,
            uninteresting_rule: &'a Option<String>,
            bug: Option<u64>,
            reports: &'a Vec<String>,
            hourly: &'a BTreeMap<u64, u64>,
            recent_len: usize,
        }
        if self.recent_encoded.len() != self.recent.len() {
            self.recent_encoded = self.recent.iter().map(encode).collect::<Result<_, _>>()?;
        }
        let head = Head {
            id: &self.id,
            signature: &self.signature,
            kind: self.kind,
            reason: &self.reason,
            crash_function: &self.crash_function,
            executable: &self.executable,
            count: self.count,
            nodes: &self.nodes,
            clusters: &self.clusters,
            versions: &self.versions,
            labels: &self.labels,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            interesting: self.interesting,
            uninteresting_rule: &self.uninteresting_rule,
            bug: self.bug,
            reports: &self.reports,
            hourly: &self.hourly,
            recent_len: self.recent.len(),
        };
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            encode_into(&mut scratch, &head)?;
            for incident in &self.recent_encoded {
                scratch.extend_from_slice(incident);
            }
            use_bytes(&scratch)
        })
    }
}

/// The author of the comments people make (through the admin token).
pub const ADMIN_AUTHOR: &str = "admin";

/// A comment on a bug.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub time_ms: u64,
    /// `endpoint` for automatic comments, `admin` for people.
    pub author: String,
    pub text: String,
}

/// A bug of the built-in tracker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BugRow {
    pub id: u64,
    pub problem_id: String,
    pub title: String,
    /// `open`, `fixed`, `closed`, `wontfix`, …
    pub status: String,
    pub workaround: Option<String>,
    /// Set when a closed bug's problem came back in a newer version.
    pub regression: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The newest version seen when the bug was closed.
    pub closed_version_max: Option<String>,
    /// Comments ever made (the newest [`COMMENTS_PER_BUG_MAX`] are kept).
    pub comments_total: u64,
    /// Comments made since the row was read, saved by `save_bug`.
    #[serde(skip)]
    pub unsaved_comments: Vec<Comment>,
}

/// A bug with its latest comments, as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BugView {
    #[serde(flatten)]
    pub bug: BugRow,
    /// Oldest first.
    pub comments: Vec<Comment>,
}

impl BugRow {
    /// True for the statuses that mean "dealt with".
    pub fn is_closed(&self) -> bool {
        is_closed_status(&self.status)
    }

    /// The reference an upload reply carries.
    pub fn to_ref(&self, public_url: &str) -> BugRef {
        BugRef {
            id: self.id,
            status: self.status.clone(),
            url: format!("{public_url}/problems/{}#bug", self.problem_id),
        }
    }

    /// Adds a comment (saved with the row by `save_bug`).
    pub fn comment(&mut self, time_ms: u64, author: &str, text: String) {
        self.unsaved_comments.push(Comment {
            time_ms,
            author: author.into(),
            text,
        });
        self.updated_ms = self.updated_ms.max(time_ms);
    }
}

/// Statuses a bug may have.
pub const BUG_STATUSES: &[&str] = &["open", "confirmed", "fixed", "closed", "wontfix"];

/// True for `fixed`, `closed` and `wontfix`.
pub fn is_closed_status(status: &str) -> bool {
    matches!(status, "fixed" | "closed" | "wontfix")
}

pub(crate) fn encode(value: &impl Serialize) -> Result<Vec<u8>, EndpointError> {
    postcard::to_allocvec(value).map_err(|error| EndpointError::Corrupt {
        what: "row (encode)".into(),
        detail: error.to_string(),
    })
}

/// Encodes `value` into this thread's scratch buffer and hands the bytes to `use_bytes`
/// (a table insert): the committer writes every touched row each batch, and
/// `postcard::to_allocvec` grew a fresh vector for each, copying it at every doubling
/// (measured: two thirds of the committer's memory copying, 6% of its time).
pub(crate) fn encode_with<R>(
    value: &impl Serialize,
    use_bytes: impl FnOnce(&[u8]) -> Result<R, EndpointError>,
) -> Result<R, EndpointError> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        encode_into(&mut scratch, value)?;
        use_bytes(&scratch)
    })
}

thread_local! {
    /// This thread's buffer for encoding rows ([`encode_with`]).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends `value`'s encoding to `buffer`.
fn encode_into(buffer: &mut Vec<u8>, value: &impl Serialize) -> Result<(), EndpointError> {
    postcard::serialize_with_flavor(value, crashmesh_protocol::wire::ExtendVec(buffer)).map_err(
        |error| EndpointError::Corrupt {
            what: "row (encode)".into(),
            detail: error.to_string(),
        },
    )?;
    Ok(())
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, EndpointError> {
    postcard::from_bytes(bytes).map_err(|error| EndpointError::Corrupt {
        what: what.into(),
        detail: error.to_string(),
    })
}

/// Writes a bug's row and appends its unsaved comments, dropping the oldest past
/// [`COMMENTS_PER_BUG_MAX`].
pub(crate) fn save_bug(
    bugs: &mut redb::Table<u64, &[u8]>,
    comments: &mut redb::Table<(u64, u64), &[u8]>,
    mut bug: BugRow,
) -> Result<(), EndpointError> {
    for comment in std::mem::take(&mut bug.unsaved_comments) {
        let number = bug.comments_total;
        encode_with(&comment, |bytes| {
            Ok(comments.insert((bug.id, number), bytes)?)
        })?;
        bug.comments_total += 1;
        if number >= COMMENTS_PER_BUG_MAX as u64 {
            comments.remove((bug.id, number - COMMENTS_PER_BUG_MAX as u64))?;
        }
    }
    encode_with(&bug, |bytes| Ok(bugs.insert(bug.id, bytes)?))?;
    Ok(())
}

/// A failed open as the error a person can act on: the database in use by a running
/// server is [`EndpointError::InUse`].
fn open_error(path: &Path, error: redb::DatabaseError) -> EndpointError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => EndpointError::InUse {
            path: path.display().to_string(),
        },
        error => EndpointError::Database(format!("{}: {error}", path.display())),
    }
}

/// Refuses a format version this build does not read.
fn check_format_version(path: &Path, version: u64) -> Result<(), EndpointError> {
    if version == FORMAT_VERSION {
        return Ok(());
    }
    Err(EndpointError::Corrupt {
        what: path.display().to_string(),
        detail: format!("format version {version}, this build reads {FORMAT_VERSION}"),
    })
}

/// Inserts into a bounded set; false when the set is full (and lacks the value).
pub(crate) fn insert_bounded(set: &mut BTreeSet<String>, value: &str) -> bool {
    if set.contains(value) {
        return true;
    }
    if set.len() >= NAMES_PER_PROBLEM_MAX {
        return false;
    }
    set.insert(value.to_string());
    true
}

/// A cluster's own row of a problem with the fields the problem shares across clusters
/// (its bug, its interest) from the problem's row in `problems`.
fn with_shared_fields(
    problems: &impl ReadableTable<&'static str, &'static [u8]>,
    own: ProblemRow,
) -> Result<ProblemRow, EndpointError> {
    let global = problems
        .get(own.id.as_str())?
        .map(|value| decode::<ProblemRow>(&format!("problem {}", own.id), value.value()))
        .transpose()?;
    Ok(match global {
        Some(global) => own.with_shared_fields_of(&global),
        None => own,
    })
}

/// The metadata database, opened by its one process: the server, or a CLI command while
/// no server runs.
pub struct Db {
    db: redb::Database,
}

/// redb's mode for the endpoint's database: one process has it (the server), and it
/// commits ingest batches without a sync (`Durability::None`, which redb allows in this
/// mode alone), the ingest journal making them durable: measured 8,700 against 6,400
/// reports/s for a synced commit per batch. Not `MultiWriter`: there every commit also
/// records redb's allocator state for the next writer (5,700–6,300 against 7,600–7,800
/// reports/s). The CLI's requests while the server runs go through its socket
/// (`crate::local`).
const CONCURRENCY_MODE: redb::ConcurrencyMode = redb::ConcurrencyMode::ExclusiveWriter;

impl Db {
    /// Opens (or creates) `DATA_DIR/endpoint.redb` as its one writer, refusing an unknown
    /// format version; [`EndpointError::InUse`] when a running server has it. Batches in
    /// the ingest journal that the database lacks (a crash) are not replayed here: the
    /// recording layer's `open_database` opens it and replays them.
    pub fn open(data_dir: &Path) -> Result<Db, EndpointError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| EndpointError::io("create", data_dir, error))?;
        let path = data_dir.join("endpoint.redb");
        let db = redb::Builder::new()
            .set_concurrency_mode(CONCURRENCY_MODE)
            .create(&path)
            .map_err(|error| open_error(&path, error))?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let version = meta.get(META_FORMAT_VERSION)?.map(|value| value.value());
            match version {
                None => {
                    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                }
                Some(version) => check_format_version(&path, version)?,
            }
            txn.open_table(TOKENS)?;
            txn.open_table(TERMS)?;
            txn.open_table(REPORTS)?;
            txn.open_table(PROBLEMS)?;
            txn.open_table(ANALYSES)?;
            txn.open_table(INCIDENTS)?;
            txn.open_table(CORE_REQUESTS)?;
            txn.open_table(CLUSTER_PROBLEMS)?;
            txn.open_table(CLUSTER_ANALYSES)?;
            txn.open_table(CLUSTER_CHUNKS)?;
            txn.open_table(BUGS)?;
            txn.open_table(COMMENTS)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(SIMILAR_KEYS)?;
            txn.open_multimap_table(SIMILAR_INDEX)?;
            txn.open_table(MERGED)?;
        }
        txn.commit()?;
        Ok(Db { db })
    }

    /// The number of the last ingest batch committed.
    pub(crate) fn journal_seq(&self) -> Result<u64, EndpointError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(META_JOURNAL_SEQ)?
            .map(|value| value.value())
            .unwrap_or(0))
    }

    /// A read transaction.
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, EndpointError> {
        Ok(self.db.begin_read()?)
    }

    /// A write transaction, durable when it commits.
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, EndpointError> {
        Ok(self.db.begin_write()?)
    }

    /// A write transaction for an ingest batch: committed without a sync (the ingest
    /// journal, or the next durable commit, makes it durable).
    pub(crate) fn begin_batch(&self) -> Result<redb::WriteTransaction, EndpointError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)
            .map_err(|error| EndpointError::Database(error.to_string()))?;
        Ok(txn)
    }

    /// Makes every commit so far durable.
    pub(crate) fn checkpoint(&self) -> Result<(), EndpointError> {
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    /// Records a token's hash for a cluster.
    pub fn add_token(&self, token_hash: &str, cluster: &str) -> Result<(), EndpointError> {
        let txn = self.begin_write()?;
        txn.open_table(TOKENS)?.insert(token_hash, cluster)?;
        txn.commit()?;
        Ok(())
    }

    /// The cluster a token's hash belongs to.
    pub fn cluster_of_token(&self, token_hash: &str) -> Result<Option<String>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        Ok(table
            .get(token_hash)?
            .map(|value| value.value().to_string()))
    }

    /// The highest term admitted for a cluster (0 if none).
    pub fn term(&self, cluster: &str) -> Result<u64, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(TERMS)?;
        Ok(table.get(cluster)?.map(|value| value.value()).unwrap_or(0))
    }

    /// A stored report.
    pub fn report(&self, report_id: &str) -> Result<Option<ReportRow>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(REPORTS)?;
        table
            .get(report_id)?
            .map(|value| decode(&format!("report {report_id}"), value.value()))
            .transpose()
    }

    /// Every stored report id, in order.
    pub fn report_ids(&self) -> Result<Vec<String>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(REPORTS)?;
        let mut ids = Vec::new();
        for entry in table.iter()? {
            let (key, _) = entry?;
            ids.push(key.value().to_string());
        }
        Ok(ids)
    }

    /// A problem's row.
    /// The problem `id` is now: itself, or the problem it was merged into.
    pub fn resolve(&self, id: &str) -> Result<String, EndpointError> {
        let txn = self.begin_read()?;
        let merged = txn.open_table(MERGED)?;
        Ok(merged
            .get(id)?
            .map_or_else(|| id.to_string(), |into| into.value().to_string()))
    }

    pub fn problem(&self, id: &str) -> Result<Option<ProblemRow>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(PROBLEMS)?;
        table
            .get(id)?
            .map(|value| decode(&format!("problem {id}"), value.value()))
            .transpose()
    }

    /// A problem as `viewer` sees it: the admin its whole row; a cluster the row of its own
    /// reports and incidents, with the problem's bug and interest (`None` when the cluster
    /// has no report in it, whoever else has).
    pub fn problem_view(
        &self,
        viewer: &Viewer,
        id: &str,
    ) -> Result<Option<ProblemRow>, EndpointError> {
        let Some(cluster) = viewer.cluster() else {
            return self.problem(id);
        };
        let txn = self.begin_read()?;
        let own = txn.open_table(CLUSTER_PROBLEMS)?;
        let Some(own) = own
            .get((cluster, id))?
            .map(|value| decode::<ProblemRow>(&format!("problem {id} of {cluster}"), value.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        Ok(Some(with_shared_fields(&txn.open_table(PROBLEMS)?, own)?))
    }

    /// A problem's analysis as `viewer` sees it: the admin the first report's, a cluster
    /// its own first report's.
    pub fn analysis_view(
        &self,
        viewer: &Viewer,
        id: &str,
    ) -> Result<Option<Problem>, EndpointError> {
        let Some(cluster) = viewer.cluster() else {
            return self.analysis(id);
        };
        let txn = self.begin_read()?;
        let table = txn.open_table(CLUSTER_ANALYSES)?;
        table
            .get((cluster, id))?
            .map(|value| decode(&format!("analysis {id} of {cluster}"), value.value()))
            .transpose()
    }

    /// The problems `viewer` sees that are like problem `id` (distance at most
    /// `distance_max`), nearest first, at most [`SIMILAR_SHOWN_MAX`]. Candidates come from
    /// the index, at most [`SIMILAR_CANDIDATES_PER_KEY`] per key; a cluster's distances
    /// are measured on its own reports' analyses, the admin's on the first reports'.
    pub fn similar_view(
        &self,
        viewer: &Viewer,
        id: &str,
        distance_max: f64,
    ) -> Result<Vec<Similar>, EndpointError> {
        use crashmesh_protocol::similarity;
        let txn = self.begin_read()?;
        let keys_of = |id: &str| -> Result<Option<SimilarKeys>, EndpointError> {
            match viewer.cluster() {
                None => txn
                    .open_table(SIMILAR_KEYS)?
                    .get(id)?
                    .map(|value| decode(&format!("similarity keys of {id}"), value.value()))
                    .transpose(),
                Some(cluster) => Ok(txn
                    .open_table(CLUSTER_ANALYSES)?
                    .get((cluster, id))?
                    .map(|value| {
                        decode::<Problem>(&format!("analysis {id} of {cluster}"), value.value())
                    })
                    .transpose()?
                    .map(|problem| SimilarKeys::of(&problem))),
            }
        };
        let Some(mine) = keys_of(id)? else {
            return Ok(Vec::new());
        };
        let index = txn.open_multimap_table(SIMILAR_INDEX)?;
        let mut candidates = BTreeSet::new();
        for key in similarity::index_keys(&mine.keys) {
            for value in index
                .get((mine.kind.as_str(), key))?
                .take(SIMILAR_CANDIDATES_PER_KEY)
            {
                let candidate = value?.value().to_string();
                if candidate != id {
                    candidates.insert(candidate);
                }
            }
        }
        let mut found = Vec::new();
        for candidate in candidates {
            let Some(theirs) = keys_of(&candidate)? else {
                continue;
            };
            if theirs.kind != mine.kind {
                continue;
            }
            let distance = similarity::distance(&mine.keys, &theirs.keys);
            if distance > distance_max {
                continue;
            }
            if let Some(row) = self.problem_view(viewer, &candidate)? {
                found.push(Similar { row, distance });
            }
        }
        found.sort_by(|a, b| {
            a.distance
                .total_cmp(&b.distance)
                .then(b.row.count.cmp(&a.row.count))
                .then(a.row.id.cmp(&b.row.id))
        });
        found.truncate(SIMILAR_SHOWN_MAX);
        Ok(found)
    }

    /// Every problem `viewer` sees ([`Db::problem_view`]), with its bug.
    pub fn problems_view(
        &self,
        viewer: &Viewer,
    ) -> Result<Vec<(ProblemRow, Option<BugRow>)>, EndpointError> {
        let Some(cluster) = viewer.cluster() else {
            return self.problems();
        };
        let txn = self.begin_read()?;
        let own = txn.open_table(CLUSTER_PROBLEMS)?;
        let problems = txn.open_table(PROBLEMS)?;
        let bugs = txn.open_table(BUGS)?;
        let mut out = Vec::new();
        for entry in own.range((cluster, "")..)? {
            let (key, value) = entry?;
            let (key_cluster, id) = key.value();
            if key_cluster != cluster {
                break;
            }
            let own: ProblemRow = decode(&format!("problem {id} of {cluster}"), value.value())?;
            let row = with_shared_fields(&problems, own)?;
            let bug = match row.bug {
                Some(bug) => bugs
                    .get(bug)?
                    .map(|value| decode::<BugRow>(&format!("bug {bug}"), value.value()))
                    .transpose()?,
                None => None,
            };
            out.push((row, bug));
        }
        Ok(out)
    }

    /// For each chunk id, whether a stored report of `cluster` names it.
    pub fn cluster_has_chunks(
        &self,
        cluster: &str,
        ids: &[&str],
    ) -> Result<Vec<bool>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CLUSTER_CHUNKS)?;
        ids.iter()
            .map(|id| Ok(table.get((cluster, *id))?.is_some()))
            .collect()
    }

    /// Asks (or stops asking) clusters for a core of a problem.
    pub fn set_core_request(
        &self,
        problem_id: &str,
        requested: bool,
        now_ms: u64,
    ) -> Result<(), EndpointError> {
        if self.problem(problem_id)?.is_none() {
            return Err(EndpointError::NotFound(format!("problem {problem_id}")));
        }
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(CORE_REQUESTS)?;
            if requested {
                table.insert(problem_id, now_ms)?;
            } else {
                table.remove(problem_id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// When a core was asked for the problem, if one is.
    pub fn core_requested(&self, problem_id: &str) -> Result<Option<u64>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(CORE_REQUESTS)?;
        Ok(table.get(problem_id)?.map(|value| value.value()))
    }

    /// A problem's analysis (the first report's, re-symbolized).
    pub fn analysis(&self, id: &str) -> Result<Option<Problem>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(ANALYSES)?;
        table
            .get(id)?
            .map(|value| decode(&format!("analysis {id}"), value.value()))
            .transpose()
    }

    /// Every problem with its bug.
    pub fn problems(&self) -> Result<Vec<(ProblemRow, Option<BugRow>)>, EndpointError> {
        let txn = self.begin_read()?;
        let problems = txn.open_table(PROBLEMS)?;
        let bugs = txn.open_table(BUGS)?;
        let mut out = Vec::new();
        for entry in problems.iter()? {
            let (key, value) = entry?;
            let row: ProblemRow = decode(&format!("problem {}", key.value()), value.value())?;
            let bug = match row.bug {
                Some(id) => bugs
                    .get(id)?
                    .map(|value| decode::<BugRow>(&format!("bug {id}"), value.value()))
                    .transpose()?,
                None => None,
            };
            out.push((row, bug));
        }
        Ok(out)
    }

    /// A bug.
    pub fn bug(&self, id: u64) -> Result<Option<BugRow>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(BUGS)?;
        table
            .get(id)?
            .map(|value| decode(&format!("bug {id}"), value.value()))
            .transpose()
    }

    /// A bug with its latest `limit` comments.
    pub fn bug_view(&self, id: u64, limit: usize) -> Result<Option<BugView>, EndpointError> {
        self.bug_view_for(&Viewer::Admin, id, limit)
    }

    /// A bug as `viewer` sees it, with its latest `limit` comments. A cluster sees a bug
    /// only when it has a report in the bug's problem, and then only what is shared: its
    /// status, workaround and the admin's comments, titled with the cluster's own reason;
    /// not the endpoint's comments, which describe every cluster's incidents, nor the
    /// versions seen when it was closed.
    pub fn bug_view_for(
        &self,
        viewer: &Viewer,
        id: u64,
        limit: usize,
    ) -> Result<Option<BugView>, EndpointError> {
        let txn = self.begin_read()?;
        let bugs = txn.open_table(BUGS)?;
        let Some(bug) = bugs
            .get(id)?
            .map(|value| decode::<BugRow>(&format!("bug {id}"), value.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let mut bug = bug;
        if let Some(cluster) = viewer.cluster() {
            let own = txn.open_table(CLUSTER_PROBLEMS)?;
            let Some(own) = own
                .get((cluster, bug.problem_id.as_str()))?
                .map(|value| decode::<ProblemRow>("problem", value.value()))
                .transpose()?
            else {
                return Ok(None);
            };
            bug.title = own.reason;
            bug.closed_version_max = None;
        }
        let table = txn.open_table(COMMENTS)?;
        let mut comments = Vec::new();
        for entry in table.range((id, 0)..=(id, u64::MAX))?.rev() {
            if comments.len() >= limit {
                break;
            }
            let (_, value) = entry?;
            let comment = decode::<Comment>("comment", value.value())?;
            if viewer.is_admin() || comment.author == ADMIN_AUTHOR {
                comments.push(comment);
            }
        }
        comments.reverse();
        Ok(Some(BugView { bug, comments }))
    }

    /// Every bug, newest first.
    pub fn bugs(&self) -> Result<Vec<BugRow>, EndpointError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(BUGS)?;
        let mut bugs = Vec::new();
        for entry in table.iter()?.rev() {
            let (key, value) = entry?;
            bugs.push(decode(&format!("bug {}", key.value()), value.value())?);
        }
        Ok(bugs)
    }

    /// Sets a bug's status and/or workaround (an empty workaround clears it); records a
    /// comment saying what changed. Closing remembers the newest version seen, which is
    /// what regression detection compares later versions with.
    pub fn set_bug(
        &self,
        id: u64,
        status: Option<&str>,
        workaround: Option<&str>,
        now_ms: u64,
    ) -> Result<BugRow, EndpointError> {
        if let Some(status) = status
            && !BUG_STATUSES.contains(&status)
        {
            return Err(EndpointError::BadRequest(format!(
                "status {status:?} is not one of {BUG_STATUSES:?}"
            )));
        }
        if let Some(workaround) = workaround
            && workaround.len() > crashmesh_protocol::report::TEXT_BYTES_MAX
        {
            return Err(EndpointError::TooLarge {
                what: "workaround bytes",
                value: workaround.len() as u64,
                limit: crashmesh_protocol::report::TEXT_BYTES_MAX as u64,
            });
        }
        let txn = self.begin_write()?;
        let bug = {
            let mut bugs = txn.open_table(BUGS)?;
            let problems = txn.open_table(PROBLEMS)?;
            let mut bug: BugRow = match bugs.get(id)? {
                Some(value) => decode(&format!("bug {id}"), value.value())?,
                None => return Err(EndpointError::NotFound(format!("bug {id}"))),
            };
            let mut changes = Vec::new();
            if let Some(status) = status
                && status != bug.status
            {
                if is_closed_status(status) && !bug.is_closed() {
                    let problem: Option<ProblemRow> = problems
                        .get(bug.problem_id.as_str())?
                        .map(|value| decode("problem", value.value()))
                        .transpose()?;
                    bug.closed_version_max =
                        problem.and_then(|problem| crate::version::newest(problem.versions.iter()));
                }
                changes.push(format!("status {} → {status}", bug.status));
                bug.status = status.to_string();
            }
            if let Some(workaround) = workaround {
                let workaround = (!workaround.trim().is_empty()).then(|| workaround.to_string());
                if workaround != bug.workaround {
                    changes.push(match &workaround {
                        Some(text) => format!("workaround: {text}"),
                        None => "workaround removed".to_string(),
                    });
                    bug.workaround = workaround;
                }
            }
            if !changes.is_empty() {
                bug.comment(now_ms, ADMIN_AUTHOR, changes.join("; "));
                let mut comments = txn.open_table(COMMENTS)?;
                save_bug(&mut bugs, &mut comments, bug.clone())?;
                bug.comments_total += bug.unsaved_comments.len() as u64;
                bug.unsaved_comments.clear();
            }
            bug
        };
        txn.commit()?;
        Ok(bug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_protocol::report::{Incident, REPORT_FORMAT_VERSION};

    #[test]
    fn a_report_row_encoded_from_its_parts_is_the_row_encoded() {
        let problem = Problem::new(ProblemKind::Core, "SIGSEGV in leaf");
        let manifest = ReportManifest {
            format_version: REPORT_FORMAT_VERSION,
            report_id: "ab".repeat(32),
            cluster_id: "c1".into(),
            term: 3,
            customer_id: Some("customer".into()),
            signature: "v1:core:leaf".into(),
            kind: problem.kind,
            problem,
            incidents: vec![Incident {
                node: "node-1".into(),
                time_ms: 1_790_000_000_000,
                report_id: "node-1:e1".into(),
                version: Some("1.0".into()),
                labels: BTreeMap::from([("run".to_string(), "t1".to_string())]),
            }],
            attachments: Vec::new(),
            scrub: None,
            created_ms: 1_790_000_000_000,
        };
        let row = ReportRow {
            manifest: manifest.clone(),
            problem_id: "0123456789abcdef".into(),
            received_ms: 1_790_000_001_000,
        };
        let parts = ReportRow::encode_parts(&manifest, &row.problem_id, row.received_ms).unwrap();
        assert_eq!(parts, encode(&row).unwrap());
        let back: ReportRow = decode("report", &parts).unwrap();
        assert_eq!(back.manifest.report_id, manifest.report_id);
    }

    fn incident(index: usize) -> IncidentRow {
        IncidentRow {
            cluster: format!("c{}", index % 3),
            node: format!("node-{index}"),
            time_ms: 1_790_000_000_000 + index as u64,
            report_id: format!("node-{index}:e{index}"),
            version: index.is_multiple_of(2).then(|| format!("1.{index}")),
            labels: BTreeMap::from([("run".to_string(), format!("t{index}"))]),
        }
    }

    #[test]
    fn a_problem_row_encoded_with_its_kept_incidents_is_the_row_encoded() {
        let mut row = ProblemRow {
            id: "0123456789abcdef".into(),
            signature: "v1:core:leaf".into(),
            kind: ProblemKind::Core,
            reason: "SIGSEGV in leaf".into(),
            crash_function: Some("leaf".into()),
            executable: None,
            count: 70,
            nodes: BTreeSet::from(["node-1".to_string()]),
            clusters: BTreeSet::from(["c1".to_string(), "c2".to_string()]),
            versions: BTreeSet::new(),
            labels: BTreeSet::from(["run=t1".to_string()]),
            first_seen: 5,
            last_seen: 9,
            interesting: false,
            uninteresting_rule: Some("kind = core".into()),
            bug: Some(12),
            reports: vec!["ab".repeat(32), "cd".repeat(32)],
            hourly: BTreeMap::from([(1, 2), (400_000, 7)]),
            recent: VecDeque::new(),
            recent_encoded: VecDeque::new(),
        };
        let encoded = |row: &mut ProblemRow| row.encode_with(|bytes| Ok(bytes.to_vec())).unwrap();
        // Empty, then growing past the bound (the oldest dropped from both).
        assert_eq!(encoded(&mut row), encode(&row).unwrap());
        for index in 0..RECENT_INCIDENTS_MAX + 7 {
            row.push_recent(incident(index)).unwrap();
            assert_eq!(encoded(&mut row), encode(&row).unwrap(), "after {index}");
        }
        assert_eq!(row.recent.len(), RECENT_INCIDENTS_MAX);
        assert_eq!(row.recent_encoded.len(), RECENT_INCIDENTS_MAX);
        // Decoded (nothing kept), then added to before it is encoded: rebuilt.
        let mut back: ProblemRow = decode("problem", &encoded(&mut row)).unwrap();
        assert!(back.recent_encoded.is_empty());
        assert_eq!(back.recent, row.recent);
        back.push_recent(incident(1000)).unwrap();
        assert_eq!(encoded(&mut back), encode(&back).unwrap());
        assert_eq!(back.recent.back(), Some(&incident(1000)));
        // The row's whole round trip.
        let again: ProblemRow = decode("problem", &encoded(&mut back)).unwrap();
        assert_eq!(again.recent, back.recent);
        assert_eq!(again.hourly, back.hourly);
        assert_eq!(again.reports, back.reports);
        assert_eq!(again.uninteresting_rule, back.uninteresting_rule);
    }
}
