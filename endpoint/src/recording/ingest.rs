//! Recording reports and incident updates: grouping into problems, rules, bugs,
//! regressions, fencing — all in one redb write transaction per batch.
//!
//! One committer thread owns every write of ingest. Requests queue jobs to it (bounded,
//! [`QUEUE_LEN_MAX`]); it takes up to [`BATCH_JOBS_MAX`] at a time, runs them in one
//! transaction, commits it without a sync and appends the batch to the ingest journal
//! ([`crate::journal`]). A syncer thread syncs the journal, once for every batch written
//! meanwhile, and then answers their jobs (group commit), while the committer records the
//! next batch. Every `checkpoint_ms` the committer makes the database durable and empties
//! the journal. Invariants:
//! - each job checks everything that can refuse it (term, report, signature) before it
//!   writes anything, so a refused job leaves nothing behind in the shared transaction;
//! - a storage error aborts the whole batch and every job in it is answered with it
//!   (the callers retry; nothing of the batch was committed or journaled);
//! - a job is answered only once its batch is in the synced journal or a durable commit;
//! - a batch's effect depends only on the database and its journal entry (no clock, no
//!   rules read while it runs), so a replay after a crash writes what the first run did;
//! - webhook events are sent only after the batch is durable, and never on a replay.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{Incident, IncidentUpdate, ReportManifest, UploadReply};
use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use crate::db::{
    ANALYSES, BUGS, BugRow, CLUSTER_ANALYSES, CLUSTER_CHUNKS, CLUSTER_PROBLEMS, COMMENTS, Db,
    HOURS_PER_PROBLEM_MAX, INCIDENTS, IncidentRow, META, META_JOURNAL_SEQ, META_NEXT_BUG, PROBLEMS,
    ProblemRow, REPORTS, REPORTS_PER_PROBLEM_MAX, ReportRow, TERMS, decode, encode, insert_bounded,
    save_bug,
};
use crate::error::EndpointError;
use crate::journal::{Entry, EntryRef, JOURNAL_BYTES_MAX, Journal, Work};
use crate::metrics::Metrics;
use crate::rules::Rule;
use crate::webhook::{Event, Webhooks};

/// Jobs waiting for the committer; more are refused with 429.
pub const QUEUE_LEN_MAX: usize = 4096;
/// Jobs in one transaction.
pub const BATCH_JOBS_MAX: usize = 512;
/// How far ahead of a cluster's last accepted term a new term may be (terms, a count of
/// elections). A term further ahead is refused ([`EndpointError::TermTooFar`]): one
/// manifest with term 2^64−1 would otherwise fence its cluster out for good, while a
/// million elections between two uploads is far beyond any real cluster's churn.
pub const TERM_STEP_MAX: u64 = 1_000_000;

/// What the committer needs besides the database.
pub struct IngestContext {
    /// Chunk storage: before a batch that records reports commits, the chunks stored so
    /// far are made durable and indexed in the same transaction, so a recorded report
    /// never names a chunk a power cut could lose.
    pub blobs: crate::blobs::Blobs,
    pub public_url: String,
    pub webhooks: Webhooks,
    pub metrics: Arc<Metrics>,
    /// How often the database is made durable (the journal holds the batches between).
    pub checkpoint_interval: Duration,
}

/// What recording a job needs besides the tables: where bug links point, the counters.
struct Recorder<'a> {
    public_url: &'a str,
    metrics: &'a Metrics,
}

/// Where a job's answer goes.
type Answer = oneshot::Sender<Result<UploadReply, EndpointError>>;

struct Job {
    work: Work,
    answer: Answer,
}

/// What the committer thread receives.
enum Command {
    Run(Job),
    /// Finish what came before, checkpoint and end the thread ([`Committer::stop`]).
    Stop,
}

/// The handle requests use to reach the committer thread.
#[derive(Clone)]
pub struct Committer {
    sender: SyncSender<Command>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Decided when a report comes in, so its journal entry carries the decision.
    rules: Arc<[Rule]>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Committer {
    /// Starts the committer thread on the database's journal. `rules` mark reports
    /// uninteresting; they are applied as reports come in ([`Committer::complete`]).
    pub fn start(
        db: Arc<Db>,
        rules: Arc<[Rule]>,
        context: IngestContext,
    ) -> Result<Committer, EndpointError> {
        let journal = db.take_journal().ok_or_else(|| {
            EndpointError::Database("the ingest journal has a committer already".into())
        })?;
        let last_seq = db.journal_seq()?;
        let (journaled, journaled_receiver) = sync_channel(JOURNALED_BATCHES_MAX);
        let syncer = {
            let journal = journal.syncer()?;
            let db = db.clone();
            let webhooks = context.webhooks.clone();
            std::thread::Builder::new()
                .name("journal-sync".into())
                .spawn(move || sync_loop(&journal, &db, &webhooks, journaled_receiver))
                .map_err(|error| {
                    EndpointError::io("spawn", std::path::Path::new("journal-sync"), error)
                })?
        };
        let (sender, receiver) = sync_channel(QUEUE_LEN_MAX);
        let thread = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || {
                let mut committer = CommitLoop {
                    db: &db,
                    context: &context,
                    journal,
                    journaled,
                    next_seq: last_seq + 1,
                    cache: RowCache::default(),
                    unsynced: false,
                    last_checkpoint: Instant::now(),
                };
                committer.run(receiver);
                committer.finish(syncer);
            })
            .map_err(|error| {
                EndpointError::io("spawn", std::path::Path::new("committer"), error)
            })?;
        Ok(Committer {
            sender,
            thread: Arc::new(Mutex::new(Some(thread))),
            rules,
        })
    }

    /// Lets the jobs queued so far finish, checkpoints, then ends the thread, which lets
    /// go of the database (a server stopped in a process that opens the database next).
    pub fn stop(&self) {
        let Some(thread) = self.thread.lock().unwrap().take() else {
            return;
        };
        if self.sender.send(Command::Stop).is_ok() {
            let _ = thread.join();
        }
    }

    async fn submit(&self, work: Work) -> Result<UploadReply, EndpointError> {
        let (answer, receiver) = oneshot::channel();
        match self.sender.try_send(Command::Run(Job { work, answer })) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(EndpointError::TooMany("the ingest queue is full".into()));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(EndpointError::Database("the committer stopped".into()));
            }
        }
        receiver
            .await
            .map_err(|_| EndpointError::Database("the committer stopped".into()))?
    }

    /// Records a report whose chunks are all stored; `analysis` replaces the manifest's
    /// problem when given (re-symbolized).
    pub async fn complete(
        &self,
        manifest: Arc<ReportManifest>,
        analysis: Option<Problem>,
    ) -> Result<UploadReply, EndpointError> {
        let uninteresting =
            crate::rules::first_match(&self.rules, analysis.as_ref().unwrap_or(&manifest.problem));
        self.submit(Work::Complete {
            manifest,
            analysis: analysis.map(Box::new),
            uninteresting,
        })
        .await
    }

    /// Records an incident update.
    pub async fn update(&self, update: IncidentUpdate) -> Result<UploadReply, EndpointError> {
        self.submit(Work::Update(update)).await
    }
}

/// The committer thread's state.
struct CommitLoop<'a> {
    db: &'a Db,
    context: &'a IngestContext,
    journal: Journal,
    /// To the syncer thread: batches written to the journal, with their answers.
    journaled: SyncSender<Journaled>,
    next_seq: u64,
    cache: RowCache,
    /// A batch was committed since the last durable commit.
    unsynced: bool,
    last_checkpoint: Instant,
}

impl CommitLoop<'_> {
    fn run(&mut self, receiver: Receiver<Command>) {
        loop {
            let first = match receiver.recv_timeout(self.context.checkpoint_interval) {
                Ok(Command::Run(job)) => job,
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint_if_due();
                    continue;
                }
            };
            let mut jobs = vec![first];
            let mut stop = false;
            while jobs.len() < BATCH_JOBS_MAX {
                match receiver.try_recv() {
                    Ok(Command::Run(job)) => jobs.push(job),
                    Ok(Command::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.batch(jobs);
            if stop {
                break;
            }
            self.checkpoint_if_due();
        }
    }

    /// The stop: every batch journaled is answered (the syncer ends once its channel
    /// closes), then the last checkpoint empties the journal.
    fn finish(self, syncer: std::thread::JoinHandle<()>) {
        let CommitLoop {
            db,
            mut journal,
            journaled,
            ..
        } = self;
        drop(journaled);
        let _ = syncer.join();
        let emptied = db.checkpoint().and_then(|()| journal.clear());
        if let Err(error) = emptied {
            tracing::error!(%error, "the last checkpoint failed; the journal keeps the batches");
        }
    }

    fn batch(&mut self, jobs: Vec<Job>) {
        let context = self.context;
        let works: Vec<&Work> = jobs.iter().map(|job| &job.work).collect();
        let now = now_ms();
        let seq = self.next_seq;
        let mut results = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        let recorder = Recorder {
            public_url: &context.public_url,
            metrics: &context.metrics,
        };
        let outcome = self.run_batch(seq, now, &works, &recorder, &mut results, &mut events);
        Metrics::add(&recorder.metrics.commit_batches, 1);
        let outcome = outcome.and_then(|staged| {
            self.next_seq += 1;
            self.unsynced = true;
            let journaled = self.journal.write(&EntryRef {
                seq,
                now_ms: now,
                works: &works,
                chunks: staged_locations(staged.as_ref()),
            });
            if let Err(error) = journaled {
                // The batch is committed, not yet durable: a durable commit makes it so.
                tracing::error!(%error, "the ingest journal failed; checkpointing instead");
                self.checkpoint()?;
            }
            if let (crate::blobs::Blobs::Local(packs), Some(staged)) = (&context.blobs, staged) {
                packs.committed(staged);
            }
            Ok(())
        });
        drop(works);
        match outcome {
            Ok(()) => {
                let batch = Journaled {
                    answers: jobs
                        .into_iter()
                        .zip(results)
                        .map(|(job, result)| (job.answer, result))
                        .collect(),
                    events,
                };
                // The syncer answers once the journal's sync covers the batch; should it be
                // gone (a panic), a durable commit stands in for the sync.
                if let Err(error) = self.journaled.send(batch) {
                    let durable = self.checkpoint();
                    error
                        .0
                        .answer(durable.as_ref().map(|_| ()), &context.webhooks);
                }
            }
            Err(error) => {
                tracing::error!(%error, jobs = jobs.len(), "ingest transaction failed");
                for job in jobs {
                    // Blob storage not ready (chunks still being written) stays a 503,
                    // for the uploader to try again.
                    let answer = match &error {
                        EndpointError::Storage(detail) => EndpointError::Storage(detail.clone()),
                        other => EndpointError::Database(other.to_string()),
                    };
                    let _ = job.answer.send(Err(answer));
                }
            }
        }
    }

    /// The batch's transaction, committed without a sync; gives the chunk locations it
    /// indexed.
    fn run_batch(
        &mut self,
        seq: u64,
        now: u64,
        works: &[&Work],
        recorder: &Recorder,
        results: &mut Vec<Result<UploadReply, EndpointError>>,
        events: &mut Vec<Event>,
    ) -> Result<Option<crate::packs::Staged>, EndpointError> {
        // Every chunk whose PUT was answered before these completions arrived is staged.
        let staged = if works
            .iter()
            .any(|work| matches!(work, Work::Complete { .. }))
        {
            self.context.blobs.stage()?
        } else {
            None
        };
        let rows = record_batch(
            self.db,
            &mut self.cache.problems,
            BatchInput {
                seq,
                now,
                works,
                chunks: staged_locations(staged.as_ref()),
            },
            recorder,
            results,
            events,
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                self.cache.problems.clear();
                return Err(error);
            }
        };
        if self.cache.problems.len() + rows.len() > PROBLEM_ROWS_CACHED_MAX {
            self.cache.problems.clear();
        }
        self.cache.problems.extend(rows);
        Ok(staged)
    }

    fn checkpoint_if_due(&mut self) {
        let due = self.last_checkpoint.elapsed() >= self.context.checkpoint_interval
            || self.journal.len_bytes() >= JOURNAL_BYTES_MAX;
        if self.unsynced
            && due
            && let Err(error) = self.checkpoint()
        {
            tracing::error!(%error, "checkpoint failed; the journal keeps the batches");
        }
    }

    /// Makes every batch committed so far durable in the database, then empties the
    /// journal.
    fn checkpoint(&mut self) -> Result<(), EndpointError> {
        self.db.checkpoint()?;
        self.unsynced = false;
        self.last_checkpoint = Instant::now();
        self.journal.rewind();
        Ok(())
    }
}

/// Batches written to the journal and waiting for their sync, at most; the committer
/// waits for room.
pub const JOURNALED_BATCHES_MAX: usize = 64;

/// A batch committed and written to the journal: its answers and events, given once a
/// sync of the journal covers it.
struct Journaled {
    answers: Vec<(Answer, Result<UploadReply, EndpointError>)>,
    events: Vec<Event>,
}

impl Journaled {
    /// Answers the batch's jobs: with their results once `durable`, else with its error.
    fn answer(self, durable: Result<(), &EndpointError>, webhooks: &Webhooks) {
        match durable {
            Ok(()) => {
                for (answer, result) in self.answers {
                    let _ = answer.send(result);
                }
                for event in self.events {
                    webhooks.send(event);
                }
            }
            Err(error) => {
                for (answer, _) in self.answers {
                    let _ = answer.send(Err(EndpointError::Database(error.to_string())));
                }
            }
        }
    }
}

/// The syncer thread: one `fdatasync` of the journal for every batch written before it
/// began, then their answers. It runs beside the committer, which meanwhile records the
/// next batch. Should the sync fail, a durable commit of the database stands in for it.
fn sync_loop(
    journal: &crate::journal::JournalSync,
    db: &Db,
    webhooks: &Webhooks,
    receiver: Receiver<Journaled>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batches = vec![first];
        while let Ok(batch) = receiver.try_recv() {
            batches.push(batch);
        }
        let durable = journal.sync().or_else(|error| {
            tracing::error!(%error, "the ingest journal's sync failed; checkpointing instead");
            db.checkpoint()
        });
        if let Err(error) = &durable {
            tracing::error!(%error, "a batch could not be made durable; its jobs fail");
        }
        for batch in batches {
            batch.answer(durable.as_ref().map(|_| ()), webhooks);
        }
    }
}

/// Problem rows as the last commit left them, kept by the committer between batches: only
/// the committer writes problem rows, so a hot problem's row is decoded once, not once per
/// batch. Emptied when a batch fails (its rows may hold what was not committed).
#[derive(Default)]
struct RowCache {
    problems: HashMap<RowKey, ProblemRow>,
}

/// Which problem row: `("", id)` the problem's own (every cluster's incidents),
/// `(cluster, id)` a cluster's alone (cluster names are never empty).
type RowKey = (String, String);

/// The key of a problem's whole row.
fn problem_key(id: &str) -> RowKey {
    (String::new(), id.to_string())
}

/// Problem rows the committer keeps between batches.
pub const PROBLEM_ROWS_CACHED_MAX: usize = 4096;

/// The chunk locations a batch indexes: those staged for it, if any.
fn staged_locations(staged: Option<&crate::packs::Staged>) -> &[(String, crate::packs::Location)] {
    staged.map_or(&[], |staged| staged.locations.as_slice())
}

/// True for errors that mean the transaction itself is broken.
fn is_fatal(error: &EndpointError) -> bool {
    matches!(
        error,
        EndpointError::Database(_) | EndpointError::Corrupt { .. } | EndpointError::Io { .. }
    )
}

/// A batch: its number, its clock, its jobs and the chunk locations it indexes.
struct BatchInput<'a> {
    seq: u64,
    now: u64,
    works: &'a [&'a Work],
    chunks: &'a [(String, crate::packs::Location)],
}

/// Runs a batch in one transaction committed without a sync (the journal or the next
/// checkpoint makes it durable); returns the problem rows it committed.
fn record_batch(
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
        crate::packs::Packs::record(&txn, batch.chunks)?;
    }
    txn.commit()?;
    Ok(rows)
}

/// Runs the journal's batches the database does not have yet (after a crash), makes the
/// database durable and gives how many it ran. Their answers and events are dropped: they
/// were given when the batches first ran.
pub(crate) fn replay(db: &Db, entries: &[Entry]) -> Result<usize, EndpointError> {
    let last_seq = db.journal_seq()?;
    let metrics = Metrics::default();
    let recorder = Recorder {
        public_url: "",
        metrics: &metrics,
    };
    let mut replayed = 0;
    for entry in entries.iter().filter(|entry| entry.seq > last_seq) {
        let works: Vec<&Work> = entry.works.iter().collect();
        record_batch(
            db,
            &mut RowCache::default().problems,
            BatchInput {
                seq: entry.seq,
                now: entry.now_ms,
                works: &works,
                chunks: &entry.chunks,
            },
            &recorder,
            &mut Vec::new(),
            &mut Vec::new(),
        )?;
        replayed += 1;
    }
    db.checkpoint()?;
    Ok(replayed)
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
    /// Rows read or changed in this batch, written back once at its end: a hot problem's
    /// row (and its bug) is decoded and encoded once per batch, not once per report.
    problem_rows: HashMap<RowKey, ProblemRow>,
    bug_rows: HashMap<u64, BugRow>,
    /// Rows committed by earlier batches ([`RowCache`]); a row taken from here is put in
    /// `problem_rows`.
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
        crate::dashboard::format_time_ms(first),
        crate::dashboard::format_time_ms(last),
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
        let row = tables.problem(&stored.problem_id)?;
        let bug = tables.bug(row.as_ref().and_then(|row| row.bug))?;
        Metrics::add(&recorder.metrics.reports_repeated, 1);
        return Ok(reply(recorder, &stored.problem_id, true, bug.as_ref()));
    }
    tables.raise_term(cluster, manifest.term)?;
    let problem_id = crashmesh_store::problem_id_for(&manifest.signature, &manifest.report_id);
    let existing = tables.take_problem(&problem_id)?;
    let known = existing.is_some();
    let mut row = existing.unwrap_or_else(|| new_problem_row(&problem_id, manifest, analysis));
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
    let Some(mut row) = tables.take_problem(&report.problem_id)? else {
        return Err(EndpointError::Corrupt {
            what: format!("report {}", update.report_id),
            detail: format!("its problem {} is missing", report.problem_id),
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
