//! Opening the metadata database after a stop: what the last durable commit lacks is in
//! the ingest journal, and it is recorded again here, before anything else reads or writes.
//!
//! Invariants: every opener of a data dir that may have crashed goes through
//! [`open_database`] (the server, and the CLI while no server runs), so nobody reads a
//! database that lacks an answered report; a batch is replayed only when its number is
//! past the last one the database committed, so a replay runs each batch once, however
//! often the journal is read; a replay's answers and webhook events are dropped (they were
//! given when the batch first ran).

use std::collections::HashMap;
use std::path::Path;

use crate::error::EndpointError;
use crate::recording::metrics::Metrics;
use crate::recording::record::{BatchInput, Recorder, record_batch};
use crate::storage::db::Db;
use crate::storage::journal::{Entry, Journal, Work};

/// Opens `DATA_DIR/endpoint.redb` as its one writer ([`Db::open`]) and replays the batches
/// of `DATA_DIR/ingest.journal` that it lacks (a crash), then empties the journal: the
/// database, and the journal for the committer ([`super::ingest::Committer::start`]).
/// [`EndpointError::InUse`] when a running server has the database.
pub fn open_database(data_dir: &Path) -> Result<(Db, Journal), EndpointError> {
    let db = Db::open(data_dir)?;
    let (mut journal, entries) = Journal::open(data_dir)?;
    if !entries.is_empty() {
        let replayed = replay(&db, &entries)?;
        if replayed > 0 {
            tracing::warn!(
                batches = replayed,
                "the endpoint stopped without a checkpoint: replayed its ingest journal"
            );
        }
    }
    journal.clear()?;
    let indexed = super::record::index_similar_once(&db)?;
    if indexed > 0 {
        tracing::info!(problems = indexed, "indexed the problems for similarity");
    }
    Ok((db, journal))
}

/// Runs the journal's batches the database does not have yet (after a crash), makes the
/// database durable and gives how many it ran. Their answers and events are dropped: they
/// were given when the batches first ran.
fn replay(db: &Db, entries: &[Entry]) -> Result<usize, EndpointError> {
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
            &mut HashMap::new(),
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
