//! Recording one batch: grouping reports into problems, rules' decisions, bugs,
//! regressions, fencing — all in one redb write transaction, committed without a sync.
//!
//! The committer ([`super::ingest`]) runs each batch through `record_batch` once; after a
//! crash, [`super::replay`] runs the journal's batches the database lacks through it again.
//! Invariants:
//! - each job checks everything that can refuse it (term, report owner, signature) before
//!   it writes anything, so a refused job leaves nothing behind in the shared transaction;
//! - a batch's effect depends only on the database and its journal entry (its clock, its
//!   jobs with their rules' decisions, the chunk locations it indexes), so a replay after a
//!   crash writes what the first run did;
//! - a report id belongs to the cluster that stored it first, and a term is fenced
//!   (`check_term_step`), in the transaction that would write.

use std::collections::{BTreeSet, HashMap};

use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{Incident, IncidentUpdate, ReportManifest, UploadReply};
use redb::{MultimapTable, ReadableTable, Table, WriteTransaction};

use crate::error::EndpointError;
use crate::recording::metrics::Metrics;
use crate::recording::webhook::Event;
use crate::storage::db::{
    ANALYSES, BUGS, BugRow, CLUSTER_ANALYSES, CLUSTER_CHUNKS, CLUSTER_PROBLEMS, COMMENTS, Db,
    HOURS_PER_PROBLEM_MAX, INCIDENTS, IncidentRow, MERGED, META, META_JOURNAL_SEQ, META_NEXT_BUG,
    META_SIMILAR_INDEXED, PROBLEMS, ProblemRow, RECENT_INCIDENTS_MAX, REPORTS,
    REPORTS_PER_PROBLEM_MAX, ReportRow, SIMILAR_INDEX, SIMILAR_KEYS, SimilarKeys, TERMS, decode,
    encode, insert_bounded, save_bug,
};
use crate::storage::journal::Work;
use crate::storage::packs::{Location, Packs};
use crate::time::format_time_ms;

/// How far ahead of a cluster's last accepted term a new term may be (terms, a count of
/// elections). A term further ahead is refused ([`EndpointError::TermTooFar`]): one
/// manifest with term 2^64−1 would otherwise fence its cluster out for good, while a
/// million elections between two uploads is far beyond any real cluster's churn.
pub const TERM_STEP_MAX: u64 = 1_000_000;

/// What recording a job needs besides the tables: where bug links point, the counters.
pub(crate) struct Recorder<'a> {
    pub(crate) public_url: &'a str,
    pub(crate) metrics: &'a Metrics,
}

/// Which problem row: `("", id)` the problem's own (every cluster's incidents),
/// `(cluster, id)` a cluster's alone (cluster names are never empty).
pub(crate) type RowKey = (String, String);

/// The key of a problem's whole row.
fn problem_key(id: &str) -> RowKey {
    (String::new(), id.to_string())
}

/// True for errors that mean the transaction itself is broken.
fn is_fatal(error: &EndpointError) -> bool {
    matches!(
        error,
        EndpointError::Database(_) | EndpointError::Corrupt { .. } | EndpointError::Io { .. }
    )
}

/// A batch: its number, its clock, its jobs and the chunk locations it indexes.
pub(crate) struct BatchInput<'a> {
    pub(crate) seq: u64,
    pub(crate) now: u64,
    pub(crate) works: &'a [&'a Work],
    pub(crate) chunks: &'a [(String, Location)],
}

/// Runs a batch in one transaction committed without a sync (the journal or the next
/// checkpoint makes it durable); returns the problem rows it committed.
pub(crate) fn record_batch(
    db: &Db,
    committed_rows: &mut HashMap<RowKey, ProblemRow>,
    batch: BatchInput,
    recorder: &Recorder,
    results: &mut Vec<Result<UploadReply, EndpointError>>,
    events: &mut Vec<Event>,
) -> Result<HashMap<RowKey, ProblemRow>, EndpointError> {
    let txn = db.begin_batch()?;
    let rows;
    {
        let mut tables = Tables::open(&txn, committed_rows)?;
        let now = batch.now;
        for work in batch.works {
            let mut job_events = Vec::new();
            let result = match work {
                Work::Complete {
                    manifest,
                    analysis,
                    uninteresting,
                } => complete(
                    &mut tables,
                    recorder,
                    manifest,
                    analysis.as_deref().unwrap_or(&manifest.problem),
                    uninteresting.clone(),
                    now,
                    &mut job_events,
                ),
                Work::Update(update) => {
                    update_incidents(&mut tables, recorder, update, now, &mut job_events)
                }
                Work::Merge { from, into } => {
                    merge(&mut tables, recorder, from, into, now, &mut job_events)
                }
            };
            if let Err(error) = &result
                && is_fatal(error)
            {
                return Err(EndpointError::Database(error.to_string()));
            }
            events.extend(job_events);
            results.push(result);
        }
        rows = tables.flush()?;
        tables.meta.insert(META_JOURNAL_SEQ, batch.seq)?;
        Packs::record(&txn, batch.chunks)?;
    }
    txn.commit()?;
    Ok(rows)
}

struct Tables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    terms: Table<'txn, &'static str, u64>,
    reports: Table<'txn, &'static str, &'static [u8]>,
    problems: Table<'txn, &'static str, &'static [u8]>,
    analyses: Table<'txn, &'static str, &'static [u8]>,
    incidents: Table<'txn, (&'static str, &'static str), &'static str>,
    bugs: Table<'txn, u64, &'static [u8]>,
    comments: Table<'txn, (u64, u64), &'static [u8]>,
    cluster_problems: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    cluster_analyses: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    cluster_chunks: Table<'txn, (&'static str, &'static str), ()>,
    merged: Table<'txn, &'static str, &'static str>,
    similar_keys: Table<'txn, &'static str, &'static [u8]>,
    similar_index: MultimapTable<'txn, (&'static str, &'static str), &'static str>,
    /// Rows read or changed in this batch, written back once at its end: a hot problem's
    /// row (and its bug) is decoded and encoded once per batch, not once per report.
    problem_rows: HashMap<RowKey, ProblemRow>,
    bug_rows: HashMap<u64, BugRow>,
    /// Rows committed by earlier batches (the committer's cache, `ingest::RowCache`); a
    /// row taken from here is put in `problem_rows`.
    committed_rows: &'txn mut HashMap<RowKey, ProblemRow>,
}

impl<'txn> Tables<'txn> {
    fn open(
        txn: &'txn WriteTransaction,
        committed_rows: &'txn mut HashMap<RowKey, ProblemRow>,
    ) -> Result<Tables<'txn>, EndpointError> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            terms: txn.open_table(TERMS)?,
            reports: txn.open_table(REPORTS)?,
            problems: txn.open_table(PROBLEMS)?,
            analyses: txn.open_table(ANALYSES)?,
            incidents: txn.open_table(INCIDENTS)?,
            bugs: txn.open_table(BUGS)?,
            comments: txn.open_table(COMMENTS)?,
            cluster_problems: txn.open_table(CLUSTER_PROBLEMS)?,
            cluster_analyses: txn.open_table(CLUSTER_ANALYSES)?,
            cluster_chunks: txn.open_table(CLUSTER_CHUNKS)?,
            merged: txn.open_table(MERGED)?,
            similar_keys: txn.open_table(SIMILAR_KEYS)?,
            similar_index: txn.open_multimap_table(SIMILAR_INDEX)?,
            problem_rows: HashMap::new(),
            bug_rows: HashMap::new(),
            committed_rows,
        })
    }

    /// Writes the rows this batch changed; returns its problem rows.
    fn flush(&mut self) -> Result<HashMap<RowKey, ProblemRow>, EndpointError> {
        let mut rows = std::mem::take(&mut self.problem_rows);
        for ((cluster, id), row) in &mut rows {
            if cluster.is_empty() {
                row.encode_with(|bytes| Ok(self.problems.insert(id.as_str(), bytes)?))?;
            } else {
                row.encode_with(|bytes| {
                    Ok(self
                        .cluster_problems
                        .insert((cluster.as_str(), id.as_str()), bytes)?)
                })?;
            }
        }
        for (_, bug) in std::mem::take(&mut self.bug_rows) {
            save_bug(&mut self.bugs, &mut self.comments, bug)?;
        }
        Ok(rows)
    }

    /// The problem `id` is now: itself, or the problem it was merged into.
    fn resolve(&self, id: &str) -> Result<String, EndpointError> {
        Ok(self
            .merged
            .get(id)?
            .map_or_else(|| id.to_string(), |into| into.value().to_string()))
    }

    /// A problem's row, taken out of the batch's cache (put it back with `put_problem`).
    fn take_problem(&mut self, id: &str) -> Result<Option<ProblemRow>, EndpointError> {
        self.take_row(problem_key(id))
    }

    /// A cluster's own row of a problem, taken out of the batch's cache (put it back with
    /// `put_cluster_problem`).
    fn take_cluster_problem(
        &mut self,
        cluster: &str,
        id: &str,
    ) -> Result<Option<ProblemRow>, EndpointError> {
        self.take_row((cluster.to_string(), id.to_string()))
    }

    fn take_row(&mut self, key: RowKey) -> Result<Option<ProblemRow>, EndpointError> {
        if let Some(row) = self.problem_rows.remove(&key) {
            return Ok(Some(row));
        }
        if let Some(row) = self.committed_rows.remove(&key) {
            return Ok(Some(row));
        }
        let (cluster, id) = &key;
        if cluster.is_empty() {
            return self.problem(id);
        }
        self.cluster_problems
            .get((cluster.as_str(), id.as_str()))?
            .map(|value| decode(&format!("problem {id} of {cluster}"), value.value()))
            .transpose()
    }

    /// A bug, taken out of the batch's cache (put it back with `put_bug`).
    fn take_bug(&mut self, id: Option<u64>) -> Result<Option<BugRow>, EndpointError> {
        if let Some(bug) = id.and_then(|id| self.bug_rows.remove(&id)) {
            return Ok(Some(bug));
        }
        self.bug(id)
    }

    fn put_problem(&mut self, row: ProblemRow) {
        self.problem_rows.insert(problem_key(&row.id), row);
    }

    fn put_cluster_problem(&mut self, cluster: &str, row: ProblemRow) {
        self.problem_rows
            .insert((cluster.to_string(), row.id.clone()), row);
    }

    fn put_bug(&mut self, bug: BugRow) {
        self.bug_rows.insert(bug.id, bug);
    }

    /// Fencing: refuses a term below the cluster's highest, or more than
    /// [`TERM_STEP_MAX`] above it.
    fn check_term(&self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        let highest = self
            .terms
            .get(cluster)?
            .map(|value| value.value())
            .unwrap_or(0);
        check_term_step(cluster, term, highest)
    }

    fn raise_term(&mut self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        let highest = self
            .terms
            .get(cluster)?
            .map(|value| value.value())
            .unwrap_or(0);
        if term > highest {
            self.terms.insert(cluster, term)?;
        }
        Ok(())
    }

    fn report(&self, report_id: &str) -> Result<Option<ReportRow>, EndpointError> {
        self.reports
            .get(report_id)?
            .map(|value| decode(&format!("report {report_id}"), value.value()))
            .transpose()
    }

    /// Whether a problem exists, without decoding or copying its row.
    fn has_problem(&self, id: &str) -> Result<bool, EndpointError> {
        let key = problem_key(id);
        if self.problem_rows.contains_key(&key) || self.committed_rows.contains_key(&key) {
            return Ok(true);
        }
        Ok(self.problems.get(id)?.is_some())
    }

    fn problem(&self, id: &str) -> Result<Option<ProblemRow>, EndpointError> {
        let key = problem_key(id);
        if let Some(row) = self
            .problem_rows
            .get(&key)
            .or_else(|| self.committed_rows.get(&key))
        {
            return Ok(Some(row.clone()));
        }
        self.problems
            .get(id)?
            .map(|value| decode(&format!("problem {id}"), value.value()))
            .transpose()
    }

    fn bug(&self, id: Option<u64>) -> Result<Option<BugRow>, EndpointError> {
        let Some(id) = id else { return Ok(None) };
        if let Some(bug) = self.bug_rows.get(&id) {
            return Ok(Some(bug.clone()));
        }
        self.bugs
            .get(id)?
            .map(|value| decode(&format!("bug {id}"), value.value()))
            .transpose()
    }

    fn next_bug_id(&mut self) -> Result<u64, EndpointError> {
        let next = self
            .meta
            .get(META_NEXT_BUG)?
            .map(|value| value.value())
            .unwrap_or(1);
        self.meta.insert(META_NEXT_BUG, next + 1)?;
        Ok(next)
    }
}

/// Refuses `term` for a cluster whose highest admitted term is `highest`: below it (stale),
/// or more than [`TERM_STEP_MAX`] above it. The server's early check and the committer's
/// check in the transaction both use this.
pub(crate) fn check_term_step(cluster: &str, term: u64, highest: u64) -> Result<(), EndpointError> {
    if term < highest {
        return Err(EndpointError::StaleTerm {
            cluster: cluster.to_string(),
            term,
            highest,
        });
    }
    if term - highest > TERM_STEP_MAX {
        return Err(EndpointError::TermTooFar {
            cluster: cluster.to_string(),
            term,
            highest,
            step_max: TERM_STEP_MAX,
        });
    }
    Ok(())
}

/// Puts a new problem into the similarity index: its keys, and the problem under each of
/// its first keys (`crashmesh_protocol::similarity`).
fn index_similar(
    keys_table: &mut Table<'_, &'static str, &'static [u8]>,
    index: &mut MultimapTable<'_, (&'static str, &'static str), &'static str>,
    problem_id: &str,
    analysis: &Problem,
) -> Result<(), EndpointError> {
    let keys = SimilarKeys::of(analysis);
    keys_table.insert(problem_id, encode(&keys)?.as_slice())?;
    for key in crashmesh_protocol::similarity::index_keys(&keys.keys) {
        index.insert((keys.kind.as_str(), key), problem_id)?;
    }
    Ok(())
}

/// Indexes, once, the problems of a database older than the similarity index; gives how
/// many it indexed (0 when the index was already whole).
pub(crate) fn index_similar_once(db: &Db) -> Result<u64, EndpointError> {
    let txn = db.begin_batch()?;
    let mut indexed = 0u64;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get(META_SIMILAR_INDEXED)?.is_some() {
            return Ok(0);
        }
        let analyses = txn.open_table(ANALYSES)?;
        let mut keys_table = txn.open_table(SIMILAR_KEYS)?;
        let mut index = txn.open_multimap_table(SIMILAR_INDEX)?;
        for entry in analyses.iter()? {
            let (id, bytes) = entry?;
            let id = id.value();
            let analysis: Problem = decode(&format!("analysis {id}"), bytes.value())?;
            index_similar(&mut keys_table, &mut index, id, &analysis)?;
            indexed += 1;
        }
        meta.insert(META_SIMILAR_INDEXED, 1)?;
    }
    txn.commit()?;
    Ok(indexed)
}

/// Refuses a stored report of another cluster ([`EndpointError::ForeignReport`]).
pub(crate) fn check_owner(report: &ReportRow, cluster: &str) -> Result<(), EndpointError> {
    if report.manifest.cluster_id != cluster {
        return Err(EndpointError::ForeignReport {
            report_id: report.manifest.report_id.clone(),
        });
    }
    Ok(())
}

fn reply(recorder: &Recorder, problem_id: &str, known: bool, bug: Option<&BugRow>) -> UploadReply {
    UploadReply {
        problem_id: problem_id.to_string(),
        known,
        bug: bug.map(|bug| bug.to_ref(recorder.public_url)),
        workaround: bug.and_then(|bug| bug.workaround.clone()),
        missing_chunks: Vec::new(),
    }
}

/// The version of an incident: its own, else the problem's package or kernel version.
fn incident_version(incident: &Incident, problem: Option<&Problem>) -> Option<String> {
    if incident.version.is_some() {
        return incident.version.clone();
    }
    let problem = problem?;
    if let Some(package) = &problem.package
        && let Some(version) = package.split_whitespace().nth(1)
    {
        return Some(version.to_string());
    }
    problem.version.clone()
}

/// Adds the incidents not yet recorded to the problem's row and to the cluster's own;
/// returns the new ones.
fn add_incidents(
    tables: &mut Tables,
    rows: [&mut ProblemRow; 2],
    cluster: &str,
    incidents: &[Incident],
    analysis: Option<&Problem>,
) -> Result<Vec<IncidentRow>, EndpointError> {
    let [row, own] = rows;
    let mut added = Vec::new();
    for incident in incidents {
        let key = (cluster, incident.report_id.as_str());
        if tables.incidents.get(key)?.is_some() {
            continue;
        }
        tables.incidents.insert(key, row.id.as_str())?;
        let incident_row = IncidentRow {
            cluster: cluster.to_string(),
            node: incident.node.clone(),
            time_ms: incident.time_ms,
            report_id: incident.report_id.clone(),
            version: incident_version(incident, analysis),
            labels: incident.labels.clone(),
        };
        count_incident(row, &incident_row)?;
        count_incident(own, &incident_row)?;
        added.push(incident_row);
    }
    Ok(added)
}

/// Counts an incident on a problem's row: its count, names, times, chart and latest.
fn count_incident(row: &mut ProblemRow, incident: &IncidentRow) -> Result<(), EndpointError> {
    row.count += 1;
    insert_bounded(&mut row.nodes, &incident.node);
    insert_bounded(&mut row.clusters, &incident.cluster);
    if let Some(version) = &incident.version {
        insert_bounded(&mut row.versions, version);
    }
    for (key, value) in &incident.labels {
        insert_bounded(&mut row.labels, &format!("{key}={value}"));
    }
    if row.count == 1 {
        row.first_seen = incident.time_ms;
        row.last_seen = incident.time_ms;
    }
    row.first_seen = row.first_seen.min(incident.time_ms);
    row.last_seen = row.last_seen.max(incident.time_ms);
    *row.hourly.entry(incident.time_ms / 3_600_000).or_insert(0) += 1;
    while row.hourly.len() > HOURS_PER_PROBLEM_MAX {
        row.hourly.pop_first();
    }
    row.push_recent(incident.clone())
}

/// A problem's row before its first incident, named after `analysis`.
fn new_problem_row(id: &str, manifest: &ReportManifest, analysis: &Problem) -> ProblemRow {
    ProblemRow {
        id: id.to_string(),
        signature: manifest.signature.clone(),
        kind: manifest.kind,
        reason: analysis.reason.clone(),
        crash_function: analysis.crash_function().map(str::to_string),
        executable: analysis.executable.clone(),
        count: 0,
        nodes: BTreeSet::new(),
        clusters: BTreeSet::new(),
        versions: BTreeSet::new(),
        labels: BTreeSet::new(),
        first_seen: 0,
        last_seen: 0,
        interesting: true,
        uninteresting_rule: None,
        bug: None,
        reports: Vec::new(),
        hourly: Default::default(),
        recent: Default::default(),
        recent_encoded: Default::default(),
    }
}

/// The cluster's own row of a problem, made (with its analysis recorded) on the cluster's
/// first report of it.
fn take_own_row(
    tables: &mut Tables,
    cluster: &str,
    problem_id: &str,
    manifest: &ReportManifest,
    analysis: &Problem,
) -> Result<ProblemRow, EndpointError> {
    if let Some(own) = tables.take_cluster_problem(cluster, problem_id)? {
        return Ok(own);
    }
    tables
        .cluster_analyses
        .insert((cluster, problem_id), encode(analysis)?.as_slice())?;
    Ok(new_problem_row(problem_id, manifest, analysis))
}

fn describe_incidents(added: &[IncidentRow]) -> String {
    let nodes: BTreeSet<&str> = added
        .iter()
        .map(|incident| incident.node.as_str())
        .collect();
    let clusters: BTreeSet<&str> = added
        .iter()
        .map(|incident| incident.cluster.as_str())
        .collect();
    let versions: BTreeSet<&str> = added
        .iter()
        .filter_map(|incident| incident.version.as_deref())
        .collect();
    let first = added
        .iter()
        .map(|incident| incident.time_ms)
        .min()
        .unwrap_or(0);
    let last = added
        .iter()
        .map(|incident| incident.time_ms)
        .max()
        .unwrap_or(0);
    let join = |set: &BTreeSet<&str>| {
        if set.is_empty() {
            "-".to_string()
        } else {
            set.iter().copied().collect::<Vec<_>>().join(", ")
        }
    };
    format!(
        "{} incident(s); nodes: {}; clusters: {}; versions: {}; time: {} .. {}",
        added.len(),
        join(&nodes),
        join(&clusters),
        join(&versions),
        format_time_ms(first),
        format_time_ms(last),
    )
}

fn event(
    recorder: &Recorder,
    kind: &'static str,
    bug: &BugRow,
    row: &ProblemRow,
    text: String,
    now: u64,
) -> Event {
    Event {
        event: kind,
        bug_id: bug.id,
        bug_url: bug.to_ref(recorder.public_url).url,
        status: bug.status.clone(),
        problem_id: row.id.clone(),
        signature: row.signature.clone(),
        kind: row.kind.to_string(),
        reason: row.reason.clone(),
        text,
        time_ms: now,
    }
}

/// What a known problem's bug does with new incidents: a comment, and a reopening as a
/// regression when the bug was closed and an incident runs a newer version than the
/// newest seen when it was closed.
fn comment_on_bug(
    recorder: &Recorder,
    bug: &mut BugRow,
    row: &ProblemRow,
    added: &[IncidentRow],
    now: u64,
    events: &mut Vec<Event>,
) {
    let text = describe_incidents(added);
    bug.comment(now, "endpoint", text.clone());
    events.push(event(recorder, "comment", bug, row, text, now));
    if !bug.is_closed() {
        return;
    }
    let Some(closed_max) = bug.closed_version_max.clone() else {
        return;
    };
    let newer = added
        .iter()
        .filter_map(|incident| incident.version.as_ref())
        .filter(|version| crate::version::compare(version, &closed_max).is_gt())
        .max_by(|a, b| crate::version::compare(a, b));
    if let Some(version) = newer {
        let text = format!(
            "regression: seen again in version {version}, newer than {closed_max} (the newest \
             seen when it was marked {}); reopened",
            bug.status
        );
        bug.status = "open".into();
        bug.regression = true;
        bug.closed_version_max = None;
        bug.comment(now, "endpoint", text.clone());
        Metrics::add(&recorder.metrics.bugs_reopened, 1);
        events.push(event(recorder, "regression", bug, row, text, now));
    }
}

fn complete(
    tables: &mut Tables,
    recorder: &Recorder,
    manifest: &ReportManifest,
    analysis: &Problem,
    uninteresting: Option<String>,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<UploadReply, EndpointError> {
    let cluster = manifest.cluster_id.as_str();
    tables.check_term(cluster, manifest.term)?;
    if let Some(stored) = tables.report(&manifest.report_id)? {
        // Another cluster's id is refused here too, whatever the server checked before:
        // the id belongs to the cluster that stored it first.
        check_owner(&stored, cluster)?;
        // A retry or a second aggregator: same answer, nothing more stored.
        tables.raise_term(cluster, manifest.term)?;
        let problem_id = tables.resolve(&stored.problem_id)?;
        let row = tables.problem(&problem_id)?;
        let bug = tables.bug(row.as_ref().and_then(|row| row.bug))?;
        Metrics::add(&recorder.metrics.reports_repeated, 1);
        return Ok(reply(recorder, &problem_id, true, bug.as_ref()));
    }
    tables.raise_term(cluster, manifest.term)?;
    // A signature whose problem was merged lands in the problem it was merged into.
    let mut problem_id = tables.resolve(&crashmesh_protocol::problem_id_for(
        &manifest.signature,
        &manifest.report_id,
    ))?;
    // A scheme 2 native signature seen for the first time joins the problem the same
    // crash's scheme 1 signature made before the upgrade, from then on.
    if !tables.has_problem(&problem_id)?
        && let Some(previous) = crashmesh_protocol::signature::previous_signature(&manifest.problem)
    {
        let old = tables.resolve(&crashmesh_protocol::problem_id_for(
            &previous.0,
            &manifest.report_id,
        ))?;
        if tables.has_problem(&old)? {
            tables.merged.insert(problem_id.as_str(), old.as_str())?;
            problem_id = old;
        }
    }
    // A scheme 1 native signature made from fewer names than the endpoint's debug files
    // give (a node without them): the problem is the one the named frames' signature
    // makes, so the same crash from a node that had the names lands in it too.
    let mut richer_signature = None;
    if !tables.has_problem(&problem_id)?
        && manifest.problem.kind == crashmesh_protocol::ProblemKind::Core
        && manifest.signature.starts_with("v1:")
        && analysis.frames != manifest.problem.frames
    {
        let richer =
            crashmesh_protocol::signature::native_signature(&analysis.frames, analysis.signal);
        if richer.0 != manifest.signature {
            let richer_id = tables.resolve(&crashmesh_protocol::problem_id_for(&richer.0, ""))?;
            tables
                .merged
                .insert(problem_id.as_str(), richer_id.as_str())?;
            problem_id = richer_id;
            richer_signature = Some(richer.0);
        }
    }
    let existing = tables.take_problem(&problem_id)?;
    let known = existing.is_some();
    let mut row = existing.unwrap_or_else(|| {
        let mut row = new_problem_row(&problem_id, manifest, analysis);
        if let Some(signature) = &richer_signature {
            row.signature = signature.clone();
        }
        row
    });
    let mut own = take_own_row(tables, cluster, &problem_id, manifest, analysis)?;
    for row in [&mut row, &mut own] {
        row.interesting = uninteresting.is_none();
        row.uninteresting_rule = uninteresting.clone();
        if row.reports.len() < REPORTS_PER_PROBLEM_MAX {
            row.reports.push(manifest.report_id.clone());
        }
    }
    let added = add_incidents(
        tables,
        [&mut row, &mut own],
        cluster,
        &manifest.incidents,
        Some(analysis),
    )?;
    Metrics::add(&recorder.metrics.incidents_recorded, added.len() as u64);
    let mut bug = tables.take_bug(row.bug)?;
    if !known {
        tables
            .analyses
            .insert(problem_id.as_str(), encode(analysis)?.as_slice())?;
        index_similar(
            &mut tables.similar_keys,
            &mut tables.similar_index,
            &problem_id,
            analysis,
        )?;
        Metrics::add(&recorder.metrics.problems_new, 1);
    }
    match &mut bug {
        None if row.interesting => {
            let id = tables.next_bug_id()?;
            let text = format!("opened: {}", describe_incidents(&added));
            let mut new_bug = BugRow {
                id,
                problem_id: problem_id.clone(),
                title: row.reason.clone(),
                status: "open".into(),
                workaround: None,
                regression: false,
                created_ms: now,
                updated_ms: now,
                closed_version_max: None,
                comments_total: 0,
                unsaved_comments: Vec::new(),
            };
            new_bug.comment(now, "endpoint", text.clone());
            row.bug = Some(id);
            Metrics::add(&recorder.metrics.bugs_opened, 1);
            events.push(event(recorder, "new_bug", &new_bug, &row, text, now));
            bug = Some(new_bug);
        }
        None => {}
        Some(bug) if !added.is_empty() => {
            comment_on_bug(recorder, bug, &row, &added, now, events);
        }
        Some(_) => {}
    }
    let reply = reply(recorder, &problem_id, known, bug.as_ref());
    if let Some(bug) = bug {
        tables.put_bug(bug);
    }
    tables.put_problem(row);
    tables.put_cluster_problem(cluster, own);
    // The chunks the cluster may name again without sending them.
    for chunk in manifest.chunk_ids() {
        tables.cluster_chunks.insert((cluster, chunk), ())?;
    }
    ReportRow::with_encoded_parts(manifest, &problem_id, now, |bytes| {
        Ok(tables.reports.insert(manifest.report_id.as_str(), bytes)?)
    })?;
    Metrics::add(&recorder.metrics.reports_completed, 1);
    Ok(reply)
}

fn update_incidents(
    tables: &mut Tables,
    recorder: &Recorder,
    update: &IncidentUpdate,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<UploadReply, EndpointError> {
    let cluster = update.cluster_id.as_str();
    tables.check_term(cluster, update.term)?;
    let Some(report) = tables.report(&update.report_id)? else {
        return Err(EndpointError::NotFound(format!(
            "report {} (upload it before its incident updates)",
            update.report_id
        )));
    };
    check_owner(&report, cluster)?;
    if report.manifest.signature != update.signature {
        return Err(EndpointError::Conflict(format!(
            "report {} has another signature",
            update.report_id
        )));
    }
    let problem_id = tables.resolve(&report.problem_id)?;
    let Some(mut row) = tables.take_problem(&problem_id)? else {
        return Err(EndpointError::Corrupt {
            what: format!("report {}", update.report_id),
            detail: format!("its problem {problem_id} is missing"),
        });
    };
    tables.raise_term(cluster, update.term)?;
    // The report's own analysis gives an incident without a version its package's: the
    // cluster's, never another's.
    let analysis = &report.manifest.problem;
    let mut own = take_own_row(tables, cluster, &row.id, &report.manifest, analysis)?;
    let added = add_incidents(
        tables,
        [&mut row, &mut own],
        cluster,
        &update.incidents,
        Some(analysis),
    )?;
    Metrics::add(&recorder.metrics.incidents_recorded, added.len() as u64);
    let mut bug = tables.take_bug(row.bug)?;
    if let Some(bug) = &mut bug
        && !added.is_empty()
    {
        comment_on_bug(recorder, bug, &row, &added, now, events);
    }
    let reply = reply(recorder, &row.id, true, bug.as_ref());
    if let Some(bug) = bug {
        tables.put_bug(bug);
    }
    tables.put_problem(row);
    tables.put_cluster_problem(cluster, own);
    Ok(reply)
}

/// The admin merges problem `from` into problem `into` (two signatures of one bug): every
/// incident, count, node, cluster, version, label and report of `from` joins `into`, per
/// cluster too; `into` keeps its bug (or takes `from`'s when it has none; `from`'s is
/// closed as its duplicate otherwise); `from` is gone, and its id, its reports and its
/// signature lead to `into` from now on ([`MERGED`]). Incidents already counted are not
/// counted again: the incidents table keeps them under the id they came with.
fn merge(
    tables: &mut Tables,
    recorder: &Recorder,
    from: &str,
    into: &str,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<UploadReply, EndpointError> {
    // Everything that can refuse the merge, before anything is written.
    if let Some(target) = tables.merged.get(from)? {
        return Err(EndpointError::Conflict(format!(
            "problem {from} was already merged into {}",
            target.value()
        )));
    }
    let into = tables.resolve(into)?;
    if into == from {
        return Err(EndpointError::BadRequest(format!(
            "problem {from} cannot be merged into itself"
        )));
    }
    let not_found = |id: &str| EndpointError::NotFound(format!("problem {id}"));
    let from_kind = tables.problem(from)?.ok_or_else(|| not_found(from))?.kind;
    let into_kind = tables.problem(&into)?.ok_or_else(|| not_found(&into))?.kind;
    if from_kind != into_kind {
        return Err(EndpointError::BadRequest(format!(
            "problem {from} is a {from_kind} problem, {into} a {into_kind} one"
        )));
    }
    let from_row = tables.take_problem(from)?.ok_or_else(|| not_found(from))?;
    let mut into_row = tables
        .take_problem(&into)?
        .ok_or_else(|| not_found(&into))?;

    // Each cluster's own rows and analyses.
    for cluster in from_row.clusters.clone() {
        let Some(own_from) = tables.take_cluster_problem(&cluster, from)? else {
            continue;
        };
        let own_into = match tables.take_cluster_problem(&cluster, &into)? {
            Some(mut own_into) => {
                merge_rows(&mut own_into, own_from);
                own_into
            }
            None => ProblemRow {
                id: into.clone(),
                signature: into_row.signature.clone(),
                reason: into_row.reason.clone(),
                crash_function: into_row.crash_function.clone(),
                executable: into_row.executable.clone(),
                ..own_from
            },
        };
        tables.put_cluster_problem(&cluster, own_into);
        tables.cluster_problems.remove((cluster.as_str(), from))?;
        let from_analysis = tables
            .cluster_analyses
            .remove((cluster.as_str(), from))?
            .map(|value| value.value().to_vec());
        if let Some(bytes) = from_analysis
            && tables
                .cluster_analyses
                .get((cluster.as_str(), into.as_str()))?
                .is_none()
        {
            tables
                .cluster_analyses
                .insert((cluster.as_str(), into.as_str()), bytes.as_slice())?;
        }
    }

    // The bug: `into`'s stays; `from`'s moves over, or is closed as its duplicate.
    let merged_count = from_row.count;
    let mut into_bug = tables.take_bug(into_row.bug)?;
    let from_bug = tables.take_bug(from_row.bug)?;
    match (&mut into_bug, from_bug) {
        (Some(into_bug), Some(mut from_bug)) => {
            from_bug.status = "closed".into();
            from_bug.comment(
                now,
                "endpoint",
                format!(
                    "duplicate of bug {}: problem {from} was merged into problem {into}",
                    into_bug.id
                ),
            );
            tables.put_bug(from_bug);
        }
        (None, Some(mut from_bug)) => {
            from_bug.problem_id = into.clone();
            into_row.bug = Some(from_bug.id);
            into_bug = Some(from_bug);
        }
        (_, None) => {}
    }
    merge_rows(&mut into_row, from_row);
    if let Some(bug) = &mut into_bug {
        let text = format!(
            "problem {from} merged into this one: {merged_count} incidents more, {} in all",
            into_row.count
        );
        bug.comment(now, "endpoint", text.clone());
        events.push(event(recorder, "comment", bug, &into_row, text, now));
    }
    let reply = reply(recorder, &into, true, into_bug.as_ref());
    if let Some(bug) = into_bug {
        tables.put_bug(bug);
    }
    tables.put_problem(into_row);
    tables.problems.remove(from)?;
    tables.analyses.remove(from)?;

    // Out of the similarity index.
    let keys = tables
        .similar_keys
        .remove(from)?
        .map(|value| decode::<SimilarKeys>(&format!("similarity keys of {from}"), value.value()))
        .transpose()?;
    if let Some(keys) = keys {
        for key in crashmesh_protocol::similarity::index_keys(&keys.keys) {
            tables
                .similar_index
                .remove((keys.kind.as_str(), key), from)?;
        }
    }

    // `from` and every id merged into it lead to `into`.
    let mut earlier = Vec::new();
    for entry in tables.merged.iter()? {
        let (id, target) = entry?;
        if target.value() == from {
            earlier.push(id.value().to_string());
        }
    }
    for id in earlier {
        tables.merged.insert(id.as_str(), into.as_str())?;
    }
    tables.merged.insert(from, into.as_str())?;
    Metrics::add(&recorder.metrics.problems_merged, 1);
    Ok(reply)
}

/// Adds `from`'s counts and names to `into` (bounded as incidents are).
fn merge_rows(into: &mut ProblemRow, from: ProblemRow) {
    if into.count == 0 {
        into.first_seen = from.first_seen;
        into.last_seen = from.last_seen;
    } else if from.count > 0 {
        into.first_seen = into.first_seen.min(from.first_seen);
        into.last_seen = into.last_seen.max(from.last_seen);
    }
    into.count += from.count;
    for (set, names) in [
        (&mut into.nodes, from.nodes),
        (&mut into.clusters, from.clusters),
        (&mut into.versions, from.versions),
        (&mut into.labels, from.labels),
    ] {
        for name in &names {
            insert_bounded(set, name);
        }
    }
    for report in from.reports {
        if into.reports.len() >= REPORTS_PER_PROBLEM_MAX {
            break;
        }
        if !into.reports.contains(&report) {
            into.reports.push(report);
        }
    }
    for (hour, count) in from.hourly {
        *into.hourly.entry(hour).or_insert(0) += count;
    }
    while into.hourly.len() > HOURS_PER_PROBLEM_MAX {
        into.hourly.pop_first();
    }
    let mut recent: Vec<IncidentRow> = std::mem::take(&mut into.recent)
        .into_iter()
        .chain(from.recent)
        .collect();
    recent.sort_by_key(|incident| incident.time_ms);
    let skip = recent.len().saturating_sub(RECENT_INCIDENTS_MAX);
    into.recent = recent.into_iter().skip(skip).collect();
    // Their kept encodings no longer match: the next encode rebuilds them.
    into.recent_encoded.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::db::Viewer;
    use crashmesh_protocol::{Frame, ProblemKind};

    fn analysis(functions: &[&str]) -> Problem {
        let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV");
        problem.frames = functions
            .iter()
            .map(|function| Frame::named(function))
            .collect();
        problem
    }

    #[test]
    fn a_database_older_than_the_similarity_index_is_indexed_once_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        // Problems recorded before the index existed: analyses, no keys, no flag.
        let rows = [
            ("aa", analysis(&["leaf", "middle", "outer", "main"])),
            ("bb", analysis(&["leaf", "middle", "other", "main"])),
            ("cc", analysis(&["parse", "read", "main"])),
        ];
        let txn = db.begin_batch().unwrap();
        {
            let mut analyses = txn.open_table(ANALYSES).unwrap();
            for (id, problem) in &rows {
                analyses
                    .insert(*id, encode(problem).unwrap().as_slice())
                    .unwrap();
                let manifest = ReportManifest {
                    format_version: crashmesh_protocol::report::REPORT_FORMAT_VERSION,
                    report_id: format!("{id}{id}"),
                    cluster_id: "c1".into(),
                    term: 1,
                    customer_id: None,
                    signature: format!("v1:{id}"),
                    kind: problem.kind,
                    problem: problem.clone(),
                    incidents: Vec::new(),
                    attachments: Vec::new(),
                    scrub: None,
                    created_ms: 0,
                };
                let row = new_problem_row(id, &manifest, problem);
                txn.open_table(PROBLEMS)
                    .unwrap()
                    .insert(*id, encode(&row).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        assert_eq!(index_similar_once(&db).unwrap(), 3);
        assert_eq!(index_similar_once(&db).unwrap(), 0, "once");
        let similar = db.similar_view(&Viewer::Admin, "aa", 0.35).unwrap();
        let found: Vec<&str> = similar
            .iter()
            .map(|similar| similar.row.id.as_str())
            .collect();
        assert_eq!(found, ["bb"], "cc shares only `main`, too far");
        assert!((similar[0].distance - (1.0 / 3.0) / (25.0 / 12.0)).abs() < 1e-9);
    }
}
