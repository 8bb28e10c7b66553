//! The committer: one thread owns every write of ingest, a batch of jobs at a time.
//!
//! Requests queue jobs to it (bounded, [`QUEUE_LEN_MAX`]); it takes up to
//! [`BATCH_JOBS_MAX`] at a time, records them in one transaction ([`super::record`]),
//! commits it without a sync and appends the batch to the ingest journal
//! ([`crate::storage::journal`]). A syncer thread syncs the journal, once for every batch
//! written meanwhile, and then answers their jobs (group commit), while the committer
//! records the next batch. Every `checkpoint_ms` the committer makes the database durable
//! and empties the journal. Invariants:
//! - a storage error aborts the whole batch and every job in it is answered with it
//!   (the callers retry; nothing of the batch was committed or journaled);
//! - a job is answered only once its batch is in the synced journal or a durable commit;
//! - whether a report is uninteresting is decided when it comes in, and its journal entry
//!   carries the decision, so a replay does not read the rules;
//! - webhook events are sent only after the batch is durable, and never on a replay.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{IncidentUpdate, ReportManifest, UploadReply};
use tokio::sync::oneshot;

use crate::error::EndpointError;
use crate::recording::metrics::Metrics;
use crate::recording::record::{BatchInput, Recorder, RowKey, record_batch};
use crate::recording::rules::Rule;
use crate::recording::webhook::{Event, Webhooks};
use crate::storage::blobs::Blobs;
use crate::storage::db::{Db, ProblemRow};
use crate::storage::journal::{EntryRef, JOURNAL_BYTES_MAX, Journal, JournalSync, Work};
use crate::storage::packs::{Location, Staged};
use crate::time::now_ms;

/// Jobs waiting for the committer; more are refused with 429.
pub const QUEUE_LEN_MAX: usize = 4096;
/// Jobs in one transaction.
pub const BATCH_JOBS_MAX: usize = 512;

/// What the committer needs besides the database.
pub struct IngestContext {
    /// Chunk storage: before a batch that records reports commits, the chunks stored so
    /// far are made durable and indexed in the same transaction, so a recorded report
    /// never names a chunk a power cut could lose.
    pub blobs: Blobs,
    pub public_url: String,
    pub webhooks: Webhooks,
    pub metrics: Arc<Metrics>,
    /// How often the database is made durable (the journal holds the batches between).
    pub checkpoint_interval: Duration,
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

impl Committer {
    /// Starts the committer thread on the database and its journal, both as
    /// [`super::replay::open_database`] gives them. `rules` mark reports uninteresting;
    /// they are applied as reports come in ([`Committer::complete`]).
    pub fn start(
        db: Arc<Db>,
        journal: Journal,
        rules: Arc<[Rule]>,
        context: IngestContext,
    ) -> Result<Committer, EndpointError> {
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
        let uninteresting = crate::recording::rules::first_match(
            &self.rules,
            analysis.as_ref().unwrap_or(&manifest.problem),
        );
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

    /// Merges problem `from` into problem `into` (the admin's decision that they are one
    /// bug); answers with `into`'s reply.
    pub async fn merge(&self, from: String, into: String) -> Result<UploadReply, EndpointError> {
        self.submit(Work::Merge { from, into }).await
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
            if let (Blobs::Local(packs), Some(staged)) = (&context.blobs, staged) {
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
    ) -> Result<Option<Staged>, EndpointError> {
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
fn sync_loop(journal: &JournalSync, db: &Db, webhooks: &Webhooks, receiver: Receiver<Journaled>) {
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

/// Problem rows the committer keeps between batches.
pub const PROBLEM_ROWS_CACHED_MAX: usize = 4096;

/// The chunk locations a batch indexes: those staged for it, if any.
fn staged_locations(staged: Option<&Staged>) -> &[(String, Location)] {
    staged.map_or(&[], |staged| staged.locations.as_slice())
}
