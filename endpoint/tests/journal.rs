//! The ingest journal through a real server: an answered report is in the synced journal
//! before any durable commit of the database, a copy of the data dir taken then (what a
//! power cut leaves) opens with the report replayed, a checkpoint makes the database
//! durable on its own, and a clean stop leaves the journal empty.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use crashmesh_endpoint::recording::open_database;
use crashmesh_endpoint::storage::Db;
use crashmesh_endpoint::storage::journal::JOURNAL_FILE;

const T0: u64 = 1_790_000_000_000;

fn journal_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join(JOURNAL_FILE))
        .map(|metadata| metadata.len())
        .unwrap_or(0)
}

#[test]
fn an_answered_report_survives_a_crash_before_any_checkpoint_through_the_journal() {
    let harness = Harness::start_with(|config| config.storage.checkpoint_ms = 600_000);
    let data_dir = harness.dir.path().join("endpoint");
    let client = harness.client("c1");
    let mut uploaded = Vec::new();
    for (index, function) in ["a", "b", "a"].iter().enumerate() {
        let log = log_bytes(&format!("journal-{index}"), 200_000);
        let (manifest, chunks) = report(
            "c1",
            1,
            &format!("r{index}"),
            problem(&format!("v1:core:{function}"), function),
            vec![incident(
                "node-1",
                &format!("e{index}"),
                T0 + index as u64,
                None,
            )],
            &log,
        );
        let reply = client.upload(&manifest, &chunks).unwrap();
        uploaded.push((manifest, reply, log));
    }
    assert!(journal_bytes(&data_dir) > 0, "the batches are journaled");

    // What a power cut leaves now, with the journal and without it.
    let crashed = harness.dir.path().join("crashed");
    copy_dir(&data_dir, &crashed, "");
    let without_journal = harness.dir.path().join("without-journal");
    copy_dir(&data_dir, &without_journal, JOURNAL_FILE);

    // Without the journal the reports are gone: nothing but the journal made them durable.
    let (db, _) = open_database(&without_journal).unwrap();
    for (manifest, _, _) in &uploaded {
        assert!(db.report(&manifest.report_id).unwrap().is_none());
    }
    drop(db);

    // With it, opening replays every answered batch: reports, problems, bugs, chunks.
    let (db, _) = open_database(&crashed).unwrap();
    for (manifest, reply, _) in &uploaded {
        let stored = db.report(&manifest.report_id).unwrap().expect("replayed");
        assert_eq!(stored.problem_id, reply.problem_id);
    }
    let first = db.problem(&uploaded[0].1.problem_id).unwrap().unwrap();
    assert_eq!(first.count, 2, "two incidents of problem a, once each");
    assert_eq!(first.bug, uploaded[0].1.bug.as_ref().map(|bug| bug.id));
    assert_eq!(
        db.bug(first.bug.unwrap()).unwrap().unwrap().comments_total,
        2,
        "opened, then one incident comment"
    );
    assert_eq!(journal_bytes(&crashed), 0, "replayed and checkpointed");
    drop(db);
    // The attachments read back through the replayed chunk index, and a second open
    // replays nothing twice.
    let config = crashmesh_endpoint::EndpointConfig {
        data_dir: crashed.clone(),
        ..Default::default()
    };
    let out = harness.dir.path().join("export");
    let summary = crashmesh_endpoint::export::export(&config, &out).unwrap();
    assert_eq!((summary.reports, summary.attachments), (3, 3));
    for (manifest, _, log) in &uploaded {
        let path = out
            .join("reports")
            .join(&manifest.report_id)
            .join("attachments/node-1/journal.log");
        assert_eq!(&std::fs::read(path).unwrap(), log);
    }
    let (db, _) = open_database(&crashed).unwrap();
    assert_eq!(
        db.problem(&uploaded[0].1.problem_id)
            .unwrap()
            .unwrap()
            .count,
        2
    );
}

#[test]
fn a_checkpoint_makes_the_database_durable_and_a_clean_stop_empties_the_journal() {
    let mut harness = Harness::start_with(|config| config.storage.checkpoint_ms = 50);
    let data_dir = harness.dir.path().join("endpoint");
    let client = harness.client("c1");
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:c", "c"),
        vec![incident("node-1", "e1", T0, None)],
        &log_bytes("checkpoint", 1000),
    );
    client.upload(&manifest, &chunks).unwrap();
    // The committer checkpoints when idle past the interval: then a copy of the data dir
    // without the journal has the report.
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let copy = harness.dir.path().join(format!("copy-{attempt}"));
        copy_dir(&data_dir, &copy, JOURNAL_FILE);
        let db = Db::open(&copy).unwrap();
        if db.report(&manifest.report_id).unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A clean stop empties the journal's file.
    harness.server.take().unwrap().stop();
    assert_eq!(journal_bytes(&data_dir), 0);
}
