//! Plain unit tests of the store's API on the real file system.

use std::collections::BTreeMap;

use crashmesh_protocol::{Problem, ProblemKind};
use crashmesh_store::*;

/// Deterministic bytes that neither compress to nothing nor repeat.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn problem(signature: &str) -> Problem {
    let mut problem = Problem::new(ProblemKind::Core, format!("SIGSEGV in {signature}"));
    problem.signature = signature.to_string();
    problem.signal = Some(11);
    problem
}

fn incident(report_id: &str, signature: &str, time_ms: u64, core: Option<BlobId>) -> NewIncident {
    NewIncident {
        report_id: report_id.to_string(),
        time_ms,
        node: "node-1".to_string(),
        problem: problem(signature),
        executable: Some("/usr/bin/storaged".to_string()),
        pid: Some(42),
        uid: Some(0),
        signal: Some(11),
        core,
        core_truncated: false,
        attachments: Vec::new(),
        labels: BTreeMap::new(),
    }
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::default()).unwrap()
}

#[test]
fn blob_round_trips_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for len in [0usize, 1, 4095, 300_000, 3_000_000] {
        let data = noise(len as u64, len);
        let id = store.put_blob_bytes(&data).unwrap();
        assert_eq!(id, BlobId::of(&data));
        assert_eq!(store.blob_len(&id).unwrap(), Some(len as u64));
        assert_eq!(store.read_blob_bytes(&id).unwrap(), data);
    }
}

#[test]
fn streaming_put_matches_bytes_put() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data = noise(7, 10_000_000);
    // A reader that hands out odd-sized pieces.
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let streamed = store.put_blob(&mut Trickle(&data)).unwrap();
    let manifest_streamed = store.manifest(&streamed).unwrap().unwrap();
    let whole = store.put_blob_bytes(&data).unwrap();
    assert_eq!(streamed, whole);
    assert_eq!(store.manifest(&whole).unwrap().unwrap(), manifest_streamed);
    assert!(manifest_streamed.chunks.len() > 20);
}

#[test]
fn equal_chunks_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let shared = noise(1, 2_000_000);
    let mut first = shared.clone();
    first.extend_from_slice(&noise(2, 500_000));
    let mut second = noise(3, 500_000);
    second.extend_from_slice(&shared);
    let a = store.put_blob_bytes(&first).unwrap();
    let chunks_after_first = store.status().unwrap().chunks;
    let b = store.put_blob_bytes(&second).unwrap();
    let chunks_after_second = store.status().unwrap().chunks;
    let manifest_a = store.manifest(&a).unwrap().unwrap();
    let manifest_b = store.manifest(&b).unwrap().unwrap();
    let ids_a: std::collections::HashSet<_> = manifest_a.chunks.iter().map(|c| c.0).collect();
    let common = manifest_b
        .chunks
        .iter()
        .filter(|c| ids_a.contains(&c.0))
        .count();
    assert!(
        common >= 8,
        "CDC should find the shared region: {common} common chunks"
    );
    assert_eq!(
        chunks_after_second - chunks_after_first,
        (manifest_b.chunks.len() - common) as u64
    );
    assert_eq!(
        store.missing_chunks(&[manifest_a.chunks[0].0]).unwrap(),
        vec![]
    );
    assert_eq!(store.read_blob_bytes(&b).unwrap(), second);
}

#[test]
fn chunks_move_between_stores() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = open(dir_a.path());
    let b = open(dir_b.path());
    let data = noise(9, 1_500_000);
    let id = a.put_blob_bytes(&data).unwrap();
    let manifest = a.manifest(&id).unwrap().unwrap();
    let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.0).collect();
    let wanted = b.missing_chunks(&ids).unwrap();
    assert_eq!(wanted.len(), ids.len());
    // Bytes under the wrong id are refused.
    let first_bytes = a.chunk_bytes(&wanted[0]).unwrap();
    let wrong = ChunkId::of(b"not this chunk");
    assert!(matches!(
        b.put_chunk_compressed(&wrong, &first_bytes),
        Err(StoreError::CorruptChunk { .. })
    ));
    for chunk in &wanted {
        b.put_chunk_compressed(chunk, &a.chunk_bytes(chunk).unwrap())
            .unwrap();
    }
    assert!(b.missing_chunks(&ids).unwrap().is_empty());
    assert_eq!(b.put_manifest(&manifest).unwrap(), id);
    assert_eq!(b.read_blob_bytes(&id).unwrap(), data);
}

#[test]
fn incidents_group_into_problems_and_repeat_report_ids_are_no_ops() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store
        .record_incident(incident("r1", "v1:aaaa", 1000, None))
        .unwrap();
    assert!(first.new_problem);
    assert_eq!(first.count, 1);
    let again = store
        .record_incident(incident("r1", "v1:aaaa", 5000, None))
        .unwrap();
    assert_eq!(again, first);
    let second = store
        .record_incident(incident("r2", "v1:aaaa", 2000, None))
        .unwrap();
    assert!(!second.new_problem);
    assert_eq!(second.count, 2);
    assert_eq!(second.problem_id, first.problem_id);
    let other = store
        .record_incident(incident("r3", "v1:bbbb", 3000, None))
        .unwrap();
    assert_ne!(other.problem_id, first.problem_id);

    assert_eq!(store.add_repeat_count("v1:aaaa", 5, 9000).unwrap(), 7);
    let problems = store.problems().unwrap();
    assert_eq!(problems.len(), 2);
    let detail = store.problem(&first.problem_id[..6]).unwrap().unwrap();
    assert_eq!(detail.summary.count, 7);
    assert_eq!(detail.summary.first_seen, 1000);
    assert_eq!(detail.summary.last_seen, 9000);
    assert_eq!(detail.incidents.len(), 2);
    assert_eq!(detail.incidents[0].report_id, "r1");
    assert_eq!(store.status().unwrap().incidents, 3);
}

#[test]
fn cores_beyond_the_per_signature_limit_are_freed_but_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut kept = Vec::new();
    for n in 0..5u64 {
        let core = store.put_blob_bytes(&noise(100 + n, 200_000)).unwrap();
        let recorded = store
            .record_incident(incident(&format!("r{n}"), "v1:cccc", n, Some(core)))
            .unwrap();
        assert_eq!(recorded.core_kept, n < 3);
        assert_eq!(recorded.count, n + 1);
        kept.push(core);
    }
    let status = store.status().unwrap();
    assert_eq!(status.blobs, 3);
    assert!(store.read_blob_bytes(&kept[2]).is_ok());
    assert!(matches!(
        store.read_blob_bytes(&kept[3]),
        Err(StoreError::UnknownBlob(_))
    ));
    let detail = store.problem("v1:cccc").unwrap().unwrap();
    assert_eq!(detail.summary.cores_kept, 3);
    assert_eq!(
        detail.incidents[4].core.as_ref().unwrap().state,
        EvidenceState::DroppedDuplicate
    );
}

#[test]
fn reopen_keeps_everything_recorded_and_drops_unrecorded_pins() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, pinned) = {
        let store = open(dir.path());
        let kept = store.put_blob_bytes(&noise(1, 100_000)).unwrap();
        store
            .record_incident(incident("r1", "v1:dddd", 1, Some(kept)))
            .unwrap();
        let pinned = store.put_blob_bytes(&noise(2, 100_000)).unwrap();
        (kept, pinned)
    };
    let store = open(dir.path());
    assert!(store.read_blob_bytes(&kept).is_ok());
    assert_eq!(store.blob_len(&pinned).unwrap(), None);
    assert!(store.check(false).unwrap().is_clean());
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta_v1"))
                .unwrap();
            meta.insert("format_version", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open(dir.path(), StoreConfig::default()),
        Err(StoreError::UnsupportedFormat { found: 99, .. })
    ));
}

fn small_store(dir: &std::path::Path, max_bytes: u64) -> (Store, FaultyFs) {
    let fs = FaultyFs::new(FaultConfig::default());
    let config = StoreConfig {
        max_bytes,
        keep_free_percent: 0,
        max_cores_per_signature: 3,
        max_age_days: 30,
    };
    let store = Store::open_with_fs(std::sync::Arc::new(fs.clone()), dir, config).unwrap();
    (store, fs)
}

fn with_evidence(
    store: &Store,
    report_id: &str,
    signature: &str,
    time_ms: u64,
    core_seed: u64,
    log_seed: u64,
) -> Recorded {
    let core = store.put_blob_bytes(&noise(core_seed, 400_000)).unwrap();
    let log = store.put_blob_bytes(&noise(log_seed, 400_000)).unwrap();
    let mut new = incident(report_id, signature, time_ms, Some(core));
    new.attachments.push(("log/journal".to_string(), log));
    store.record_incident(new).unwrap()
}

#[test]
fn eviction_takes_duplicate_cores_then_first_cores_then_logs_and_keeps_metadata() {
    let dir = std::path::Path::new("/spool");
    let (store, _fs) = small_store(dir, 64 << 20);
    with_evidence(&store, "a1", "v1:a", 1, 1, 2);
    with_evidence(&store, "a2", "v1:a", 2, 3, 4);
    with_evidence(&store, "b1", "v1:b", 3, 5, 6);
    let used = store.status().unwrap().used_bytes;

    // Room for all but about one blob: the duplicate core a2 goes first.
    let (store, fs) = {
        drop(store);
        let config = StoreConfig {
            max_bytes: used - 200_000,
            keep_free_percent: 0,
            max_cores_per_signature: 3,
            max_age_days: 30,
        };
        let fs = _fs;
        (
            Store::open_with_fs(std::sync::Arc::new(fs.clone()), dir, config).unwrap(),
            fs,
        )
    };
    let report = store.enforce_quota(10).unwrap();
    assert_eq!(
        report.evicted,
        vec![("a2".to_string(), "core".to_string(), EvidenceState::Evicted)]
    );
    assert!(report.used_bytes_after <= report.allowed_bytes);

    // Much less room: first cores (oldest first), then logs.
    drop(store);
    let config = StoreConfig {
        max_bytes: used - 1_500_000,
        keep_free_percent: 0,
        max_cores_per_signature: 3,
        max_age_days: 30,
    };
    let store = Store::open_with_fs(std::sync::Arc::new(fs.clone()), dir, config).unwrap();
    let report = store.enforce_quota(10).unwrap();
    let order: Vec<(&str, &str)> = report
        .evicted
        .iter()
        .map(|(report, name, _)| (report.as_str(), name.as_str()))
        .collect();
    assert_eq!(
        order[..3],
        [("a1", "core"), ("b1", "core"), ("a1", "log/journal")]
    );
    assert!(report.used_bytes_after <= report.allowed_bytes);
    // Metadata and counts are all still there.
    assert_eq!(store.problem("v1:a").unwrap().unwrap().summary.count, 2);
    assert_eq!(store.problem("v1:a").unwrap().unwrap().incidents.len(), 2);
    assert_eq!(
        store.problem("v1:b").unwrap().unwrap().summary.cores_kept,
        0
    );
    assert!(store.check(false).unwrap().is_clean());
}

#[test]
fn uploaded_problems_lose_evidence_first_and_old_evidence_expires() {
    let dir = std::path::Path::new("/spool");
    let (store, fs) = small_store(dir, 64 << 20);
    let a = with_evidence(&store, "a1", "v1:a", 1, 1, 2);
    with_evidence(&store, "b1", "v1:b", 2, 3, 4);
    store
        .set_upload_state(&a.problem_id, UploadState::Uploaded { at_ms: 5 })
        .unwrap();
    let used = store.status().unwrap().used_bytes;
    drop(store);
    let config = StoreConfig {
        max_bytes: used - 200_000,
        keep_free_percent: 0,
        max_cores_per_signature: 3,
        max_age_days: 1,
    };
    let store = Store::open_with_fs(std::sync::Arc::new(fs.clone()), dir, config).unwrap();
    let report = store.enforce_quota(10).unwrap();
    assert_eq!(
        report.evicted[0].0, "a1",
        "the uploaded problem's core goes first"
    );
    // Two days later everything is expired, metadata stays.
    let report = store.enforce_quota(2 * 86_400_000 + 10).unwrap();
    assert!(
        report
            .evicted
            .iter()
            .all(|(_, _, state)| *state == EvidenceState::Expired)
    );
    assert_eq!(store.status().unwrap().blobs, 0);
    assert_eq!(store.status().unwrap().incidents, 2);
}

#[test]
fn check_finds_and_repairs_corrupt_and_missing_chunks_and_orphans() {
    let dir = std::path::Path::new("/spool");
    let (store, fs) = small_store(dir, 64 << 20);
    let core_bytes = noise(1, 400_000);
    let core = store.put_blob_bytes(&core_bytes).unwrap();
    let recorded = store
        .record_incident(incident("r1", "v1:a", 1, Some(core)))
        .unwrap();
    let other = store.put_blob_bytes(&noise(2, 100_000)).unwrap();
    store
        .record_incident(incident("r2", "v1:b", 2, Some(other)))
        .unwrap();
    assert!(store.check(false).unwrap().is_clean());

    let manifest = store.manifest(&core).unwrap().unwrap();
    // The core's pack: the first pack file, its second chunk lies after the first's frame.
    let packs = fs.list_dir(&dir.join("packs")).unwrap();
    let core_pack = dir.join("packs").join(&packs[0]);
    let first_chunk = store.chunk_bytes(&manifest.chunks[0].0).unwrap();
    fs.corrupt(&core_pack, first_chunk.len() + 20, b"rot")
        .unwrap();
    fs.write_file(&dir.join("packs").join("00000000000000ff.pack"), b"orphan")
        .unwrap();

    assert!(matches!(
        store.read_blob_bytes(&core),
        Err(StoreError::CorruptChunk { .. })
    ));
    let report = store.check(false).unwrap();
    assert_eq!(report.corrupt_chunks, vec![manifest.chunks[1].0]);
    assert_eq!(report.damaged_blobs, vec![core]);
    assert_eq!(report.orphan_files.len(), 1);
    let report = store.check(true).unwrap();
    assert!(report.unrepaired.is_empty(), "{report:?}");
    assert_eq!(
        report.dropped_references,
        vec![("r1".to_string(), "core".to_string())]
    );

    let after = store.check(false).unwrap();
    assert!(after.is_clean(), "{after:?}");
    let detail = store.problem(&recorded.problem_id).unwrap().unwrap();
    assert_eq!(detail.summary.count, 1);
    assert_eq!(
        detail.incidents[0].core.as_ref().unwrap().state,
        EvidenceState::Damaged
    );
    assert_eq!(store.read_blob_bytes(&other).unwrap(), noise(2, 100_000));
}

#[test]
fn attachments_added_later_are_kept_once_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .record_incident(incident("r1", "sig-a", 1_000, None))
            .unwrap();
        let log = store
            .put_blob_bytes(b"10:00:01 csd: chunk 7 failed\n")
            .unwrap();
        let added = store
            .add_attachments("r1", vec![("log/csd.log".into(), log)])
            .unwrap();
        assert_eq!(added, 1);
        // The same name again (a retried gather) adds nothing and leaves no pin behind.
        let again = store.put_blob_bytes(b"other bytes").unwrap();
        assert_eq!(
            store
                .add_attachments("r1", vec![("log/csd.log".into(), again)])
                .unwrap(),
            0
        );
        assert!(store.add_attachments("missing", vec![]).is_err());
    }
    let store = open(dir.path());
    let detail = store.incident("r1").unwrap().unwrap();
    assert_eq!(detail.attachments.len(), 1);
    assert_eq!(detail.attachments[0].name, "log/csd.log");
    assert_eq!(
        store.read_blob_bytes(&detail.attachments[0].blob).unwrap(),
        b"10:00:01 csd: chunk 7 failed\n"
    );
    assert!(store.check(false).unwrap().is_clean());
}

/// Bytes a directory takes on disk, as `du` counts them.
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total += metadata.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn the_usage_the_quota_sees_is_what_the_disk_holds_after_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 40u64 << 20;
    let store = Store::open(
        dir.path(),
        StoreConfig {
            max_bytes: quota,
            keep_free_percent: 0,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    for round in 0..3u64 {
        let core = store.put_blob_bytes(&noise(round + 100, 30 << 20)).unwrap();
        store
            .record_incident(incident(
                &format!("r{round}"),
                "sig-big",
                1000 + round,
                Some(core),
            ))
            .unwrap();
        store.enforce_quota(2000 + round).unwrap();
    }
    let status = store.status().unwrap();
    let on_disk = disk_usage(dir.path());
    assert!(status.used_bytes <= quota, "{status:?}");
    assert!(on_disk <= quota, "{on_disk} on disk");
    // The counter may round up (whole blocks), never lag behind deletions by a blob.
    assert!(
        status.used_bytes.abs_diff(on_disk) < 4 << 20,
        "counted {} but {on_disk} on disk",
        status.used_bytes
    );
}

/// A pack whose chunks are partly still referenced is rewritten without the rest: the
/// live chunks move to a new pack, the old pack goes, and the space follows.
#[test]
fn a_pack_holding_garbage_is_rewritten_with_only_its_live_chunks() {
    let dir = std::path::Path::new("/spool");
    let (store, fs) = small_store(dir, 64 << 20);
    let packs = |fs: &FaultyFs| fs.list_dir(&dir.join("packs")).unwrap();
    let shared = noise(7, 600_000);
    let first = [noise(8, 900_000), shared.clone()].concat();
    let second = [noise(9, 300_000), shared.clone()].concat();
    let first_id = store.put_blob_bytes(&first).unwrap();
    let second_id = store.put_blob_bytes(&second).unwrap();
    assert_eq!(packs(&fs).len(), 2, "one pack per put");
    let used_before = store.status().unwrap().used_bytes;

    // The first blob goes: its own chunks are garbage, the shared ones are still held.
    store.release_blob(&first_id).unwrap();
    store.collect_garbage().unwrap();
    let after = packs(&fs);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !after.contains(&"0000000000000001.pack".to_string()),
        "the first pack was rewritten: {after:?}"
    );
    assert_eq!(store.read_blob_bytes(&second_id).unwrap(), second);
    let used_after = store.status().unwrap().used_bytes;
    assert!(
        used_before - used_after >= 800_000,
        "the first blob's own chunks freed their space: {used_before} -> {used_after}"
    );
    assert!(store.check(false).unwrap().is_clean());

    // The second goes too: nothing is left in any pack, so every pack file goes.
    store.release_blob(&second_id).unwrap();
    store.collect_garbage().unwrap();
    assert!(packs(&fs).is_empty(), "{:?}", packs(&fs));
    assert!(store.check(false).unwrap().is_clean());
}

#[test]
fn a_scheme_2_signature_keeps_counting_the_problem_its_crash_had_under_scheme_1() {
    use crashmesh_protocol::Frame;
    use crashmesh_protocol::signature::native_signature;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let frames: Vec<Frame> = ["leaf", "middle", "main"].map(Frame::named).to_vec();
    // Recorded before the upgrade: the version 1 signature of these frames.
    let mut before = incident("r1", "", 1_000, None);
    before.problem.frames = frames.clone();
    before.problem.signature = native_signature(&frames, Some(11)).0;
    let old = store.record_incident(before).unwrap();
    // The same crash after it: a version 2 signature, the same frames.
    let v2 = "v2:00112233445566778899aabbccddeeff00112233";
    let mut after = incident("r2", v2, 2_000, None);
    after.problem.frames = frames.clone();
    let recorded = store.record_incident(after).unwrap();
    assert_eq!(recorded.problem_id, old.problem_id);
    assert!(!recorded.new_problem);
    assert_eq!(recorded.count, 2);
    assert_eq!(
        store.problem_of_signature(v2).unwrap().unwrap().id,
        old.problem_id
    );
    // Another crash's version 2 signature is its own problem.
    let mut other = incident(
        "r3",
        "v2:ffeeddccbbaa99887766554433221100ffeeddcc",
        3_000,
        None,
    );
    other.problem.frames = frames[1..].to_vec();
    let recorded = store.record_incident(other).unwrap();
    assert!(recorded.new_problem);
}
