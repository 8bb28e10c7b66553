//! The bytes the store says it uses (`status`, `enforce_quota`'s report) against what the
//! disk holds, counted like `du` (allocated blocks), at any moment: while a garbage
//! collection is deleting pack files, while puts run concurrently, and after an unclean
//! stop.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use crashmesh_protocol::{Problem, ProblemKind};
use crashmesh_store::*;

const MIB: u64 = 1 << 20;
/// What `du` and the store may disagree on: the index file's unallocated tail, rounding.
const SLACK_BYTES: u64 = MIB;

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

fn incident(report_id: &str, time_ms: u64, core: Option<BlobId>) -> NewIncident {
    let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV in hoarder");
    problem.signature = "sig-hoarder".to_string();
    NewIncident {
        report_id: report_id.to_string(),
        time_ms,
        node: "node-1".to_string(),
        problem,
        executable: Some("/usr/bin/hoarder".to_string()),
        pid: Some(42),
        uid: Some(0),
        signal: Some(11),
        core,
        core_truncated: false,
        attachments: Vec::new(),
        labels: BTreeMap::new(),
    }
}

fn config(max_bytes: u64) -> StoreConfig {
    StoreConfig {
        max_bytes,
        keep_free_percent: 0,
        ..StoreConfig::default()
    }
}

/// Bytes a directory's files take on disk, as `du` counts them (st_blocks).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total += metadata.blocks() * 512;
            }
        }
    }
    total
}

fn pack_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("packs")).unwrap().count()
}

#[track_caller]
fn assert_agrees_with_disk(what: &str, used_bytes: u64, dir: &Path) {
    let on_disk = disk_usage(dir);
    assert!(
        used_bytes.abs_diff(on_disk) <= SLACK_BYTES,
        "{what}: the store counts {used_bytes} bytes, the disk holds {on_disk} ({} pack files)",
        pack_files(dir)
    );
}

/// The real file system, with a hook that can stop a chosen pack-file removal (after it
/// happened) until the test lets it go.
#[derive(Debug)]
struct PausingFs {
    removals: AtomicUsize,
    /// Pause after this many pack-file removals (0: never).
    pause_after: AtomicUsize,
    paused: Mutex<Option<(SyncSender<()>, Receiver<()>)>>,
    /// Disk bytes of the pack file removed last.
    last_removed_bytes: AtomicU64,
    /// Pause before the next read of this pack file (its name).
    read_pause: Mutex<Option<ReadPause>>,
}

/// A pack file's name, then (paused, resume) channels.
type ReadPause = (String, SyncSender<()>, Receiver<()>);

impl PausingFs {
    fn new() -> Arc<PausingFs> {
        Arc::new(PausingFs {
            removals: AtomicUsize::new(0),
            pause_after: AtomicUsize::new(0),
            paused: Mutex::new(None),
            last_removed_bytes: AtomicU64::new(0),
            read_pause: Mutex::new(None),
        })
    }

    /// Arms a pause before the next read of pack file `name`; gives back (paused, resume).
    fn pause_before_reading(&self, name: &str) -> (Receiver<()>, SyncSender<()>) {
        let (paused_tx, paused_rx) = sync_channel(1);
        let (resume_tx, resume_rx) = sync_channel(1);
        *self.read_pause.lock().unwrap() = Some((name.to_string(), paused_tx, resume_rx));
        (paused_rx, resume_tx)
    }

    /// Arms a pause after `count` more pack-file removals; gives back (paused, resume).
    fn pause_after(&self, count: usize) -> (Receiver<()>, SyncSender<()>) {
        let (paused_tx, paused_rx) = sync_channel(1);
        let (resume_tx, resume_rx) = sync_channel(1);
        *self.paused.lock().unwrap() = Some((paused_tx, resume_rx));
        self.removals.store(0, Ordering::SeqCst);
        self.pause_after.store(count, Ordering::SeqCst);
        (paused_rx, resume_tx)
    }
}

impl Fs for PausingFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir_all(path)
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        RealFs.write_file(path, data)
    }
    fn append_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        RealFs.append_file(path, data)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let armed = {
            let mut pause = self.read_pause.lock().unwrap();
            let hit = pause.as_ref().is_some_and(|(name, _, _)| {
                path.file_name().is_some_and(|file| file == name.as_str())
            });
            if hit { pause.take() } else { None }
        };
        if let Some((_, paused, resume)) = armed {
            paused.send(()).unwrap();
            resume.recv().unwrap();
        }
        RealFs.read_at(path, offset, len)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_dir(path)
    }
    fn sync_filesystem(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_filesystem(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read_file(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let is_pack = path.parent().is_some_and(|dir| dir.ends_with("packs"));
        if is_pack {
            use std::os::unix::fs::MetadataExt;
            let bytes = std::fs::metadata(path).map_or(0, |m| m.blocks() * 512);
            self.last_removed_bytes.store(bytes, Ordering::SeqCst);
        }
        let result = RealFs.remove_file(path);
        if is_pack && result.is_ok() {
            let done = self.removals.fetch_add(1, Ordering::SeqCst) + 1;
            if done == self.pause_after.load(Ordering::SeqCst)
                && let Some((paused, resume)) = self.paused.lock().unwrap().take()
            {
                paused.send(()).unwrap();
                resume.recv().unwrap();
            }
        }
        result
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dir(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        RealFs.file_len(path)
    }
    fn space(&self, path: &Path) -> io::Result<FsSpace> {
        RealFs.space(path)
    }
    fn open_database(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        RealFs.open_database(path)
    }
}

/// The e2e scenario's shape: three 30 MiB cores against a 40 MiB quota. While the
/// collection that follows the eviction of two cores is deleting their pack files, the
/// store's usage must follow the disk, not lag until the last file is gone: at most the
/// file being removed at that moment is still counted (over-counted, never under).
#[test]
fn usage_follows_the_disk_while_garbage_is_being_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 40 * MIB;
    let fs = PausingFs::new();
    let store = Arc::new(Store::open_with_fs(fs.clone(), dir.path(), config(quota)).unwrap());
    let first = store.put_blob_bytes(&noise(1, 30 << 20)).unwrap();
    store
        .record_incident(incident("r0", 1000, Some(first)))
        .unwrap();
    store.enforce_quota(1500).unwrap();
    for round in 1..3u64 {
        let core = store.put_blob_bytes(&noise(round + 1, 30 << 20)).unwrap();
        store
            .record_incident(incident(&format!("r{round}"), 1000 + round, Some(core)))
            .unwrap();
        // No quota pass yet: the daemon runs it after the spool entry left the disk.
    }
    assert_agrees_with_disk(
        "before eviction",
        store.status().unwrap().used_bytes,
        dir.path(),
    );

    // Two cores (one pack file each) go; stop the collection after each removal.
    for pause_at in [1, 2] {
        let (paused, resume) = fs.pause_after(pause_at);
        let quota_pass = {
            let store = store.clone();
            std::thread::spawn(move || store.enforce_quota(2000))
        };
        paused.recv().unwrap();
        let status = store.status().unwrap();
        let on_disk = disk_usage(dir.path());
        let files = pack_files(dir.path());
        let in_flight = fs.last_removed_bytes.load(Ordering::SeqCst);
        resume.send(()).unwrap();
        let report = quota_pass.join().unwrap().unwrap();
        assert!(
            status.used_bytes + SLACK_BYTES >= on_disk
                && status.used_bytes <= on_disk + in_flight + SLACK_BYTES,
            "paused after {pause_at} removals: status says {} bytes used, {files} pack files \
             hold {on_disk}, the one being removed {in_flight}",
            status.used_bytes,
        );
        assert!(!report.still_over_quota, "{report:?}");
        assert_agrees_with_disk("after the pass", report.used_bytes_after, dir.path());
        assert_agrees_with_disk(
            "status after the pass",
            store.status().unwrap().used_bytes,
            dir.path(),
        );
        if pause_at < 2 {
            // Back over the quota for the next pause point.
            let core = store
                .put_blob_bytes(&noise(10 + pause_at as u64, 30 << 20))
                .unwrap();
            store
                .record_incident(incident(&format!("p{pause_at}a"), 3000, Some(core)))
                .unwrap();
            let core = store
                .put_blob_bytes(&noise(20 + pause_at as u64, 30 << 20))
                .unwrap();
            store
                .record_incident(incident(&format!("p{pause_at}b"), 3001, Some(core)))
                .unwrap();
        }
    }
}

/// A source that hands out `len` bytes but blocks in the middle until told to go on, so
/// that a put is running (and holds off garbage collection) for as long as the test wants.
struct HeldSource {
    data: Vec<u8>,
    offset: usize,
    hold_at: usize,
    holding: Option<(SyncSender<()>, Receiver<()>)>,
}

impl Read for HeldSource {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.offset >= self.hold_at
            && let Some((started, go_on)) = self.holding.take()
        {
            started.send(()).unwrap();
            go_on.recv().unwrap();
        }
        let end = self
            .data
            .len()
            .min(self.offset + out.len())
            .min(if self.holding.is_some() {
                self.hold_at
            } else {
                usize::MAX
            });
        let read = end - self.offset;
        out[..read].copy_from_slice(&self.data[self.offset..end]);
        self.offset = end;
        Ok(read)
    }
}

fn held_put(
    store: &Arc<Store>,
    data: Vec<u8>,
) -> (
    Receiver<()>,
    SyncSender<()>,
    std::thread::JoinHandle<BlobId>,
) {
    let (started_tx, started_rx) = sync_channel(1);
    let (go_tx, go_rx) = sync_channel(1);
    let hold_at = data.len() / 2;
    let mut source = HeldSource {
        data,
        offset: 0,
        hold_at,
        holding: Some((started_tx, go_rx)),
    };
    let store = store.clone();
    let handle = std::thread::spawn(move || store.put_blob(&mut source).unwrap());
    (started_rx, go_tx, handle)
}

/// Garbage made while a put runs cannot be collected then (the put may reuse it); it
/// stays counted while its files stay, and the next quota pass collects it, even with
/// other puts starting and ending around it.
#[test]
fn garbage_left_by_a_concurrent_put_is_collected_later_and_counted_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), config(1 << 40)).unwrap());
    // max_cores_per_signature is 3 by default: the fourth core is freed at recording.
    let mut cores = Vec::new();
    for round in 0..4u64 {
        cores.push(store.put_blob_bytes(&noise(round + 1, 4 << 20)).unwrap());
    }
    let (started, go_on, put) = held_put(&store, noise(99, 6 << 20));
    started.recv().unwrap();
    for (round, core) in cores.iter().enumerate() {
        store
            .record_incident(incident(
                &format!("r{round}"),
                1000 + round as u64,
                Some(*core),
            ))
            .unwrap();
    }
    let spare = store.put_blob_bytes(&noise(50, 2 << 20)).unwrap();
    store.release_blob(&spare).unwrap();
    // Garbage is there (a core and a released blob), its files too: counted.
    assert_agrees_with_disk(
        "garbage held by a put",
        store.status().unwrap().used_bytes,
        dir.path(),
    );
    go_on.send(()).unwrap();
    let held = put.join().unwrap();
    store.release_blob(&held).unwrap();
    let report = store.enforce_quota(2000).unwrap();
    assert_agrees_with_disk("after the quota pass", report.used_bytes_after, dir.path());
    let status = store.status().unwrap();
    assert_agrees_with_disk("status after the quota pass", status.used_bytes, dir.path());
    // Exactly the three kept cores' chunks are left (4 MiB / 128 KiB on average each).
    assert_eq!(status.blobs, 3);
    assert!(store.check(false).unwrap().is_clean());
    // Recovery recomputes the counters from the index: the live ones were right (only the
    // index file itself may have grown).
    drop(store);
    let store = Store::open(dir.path(), config(1 << 40)).unwrap();
    let reopened = store.status().unwrap();
    assert_eq!(reopened.chunks, status.chunks);
    assert!(
        reopened.used_bytes.abs_diff(status.used_bytes) < 256 << 10,
        "{reopened:?} vs {status:?}"
    );
    assert_agrees_with_disk("after reopen", reopened.used_bytes, dir.path());
}

/// Many threads putting, recording, releasing and enforcing the quota on one store, as the
/// daemon's actors do; then an unclean stop (puts still pinned) and a reopen. At every
/// quiet point the counters match the files.
#[test]
fn concurrent_puts_and_quota_passes_keep_the_counter_on_the_files_across_an_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 24 * MIB;
    let store = Arc::new(Store::open(dir.path(), config(quota)).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|worker| {
            let store = store.clone();
            std::thread::spawn(move || {
                for round in 0..6u64 {
                    let seed = worker * 100 + round;
                    let core = store.put_blob_bytes(&noise(seed, 3 << 20)).unwrap();
                    let log = store.put_blob_bytes(&noise(seed + 50, 200 << 10)).unwrap();
                    let mut new = incident(&format!("w{worker}r{round}"), seed, Some(core));
                    new.attachments.push(("log".to_string(), log));
                    store.record_incident(new).unwrap();
                    if round % 2 == 0 {
                        let spare = store.put_blob_bytes(&noise(seed + 70, 1 << 20)).unwrap();
                        store.release_blob(&spare).unwrap();
                    }
                    let report = store.enforce_quota(10_000).unwrap();
                    assert!(
                        report.used_bytes_after <= report.allowed_bytes || report.still_over_quota,
                        "{report:?}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let report = store.enforce_quota(20_000).unwrap();
    assert!(report.used_bytes_after <= quota, "{report:?}");
    assert_agrees_with_disk(
        "after concurrent work",
        store.status().unwrap().used_bytes,
        dir.path(),
    );

    // Unclean stop: blobs put and never recorded, garbage never collected.
    let pinned = store.put_blob_bytes(&noise(7000, 8 << 20)).unwrap();
    let core = store.put_blob_bytes(&noise(7001, 3 << 20)).unwrap();
    store
        .record_incident(incident("late", 30_000, Some(core)))
        .unwrap();
    assert!(store.blob_len(&pinned).unwrap().is_some());
    assert_agrees_with_disk(
        "before the stop",
        store.status().unwrap().used_bytes,
        dir.path(),
    );
    drop(store);
    let store = Store::open(dir.path(), config(quota)).unwrap();
    assert!(store.blob_len(&pinned).unwrap().is_none());
    assert_agrees_with_disk(
        "after reopen",
        store.status().unwrap().used_bytes,
        dir.path(),
    );
    let report = store.enforce_quota(40_000).unwrap();
    assert!(report.used_bytes_after <= quota, "{report:?}");
    assert_agrees_with_disk(
        "after reopen and a pass",
        store.status().unwrap().used_bytes,
        dir.path(),
    );
    assert!(store.check(false).unwrap().is_clean());
}

/// The daemon's ingest and its periodic quota actor may enforce the quota at the same
/// time: together they evict what one pass would, so the first core stays.
#[test]
fn concurrent_quota_passes_evict_no_more_than_one_would() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 40 * MIB;
    let store = Arc::new(Store::open(dir.path(), config(quota)).unwrap());
    for round in 0..3u64 {
        let core = store.put_blob_bytes(&noise(round + 1, 30 << 20)).unwrap();
        store
            .record_incident(incident(&format!("r{round}"), 1000 + round, Some(core)))
            .unwrap();
    }
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let passes: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store.enforce_quota(2000).unwrap()
            })
        })
        .collect();
    let evicted: usize = passes
        .into_iter()
        .map(|pass| pass.join().unwrap().evicted.len())
        .sum();
    assert_eq!(evicted, 2);
    let first = store.incident("r0").unwrap().unwrap();
    assert_eq!(first.core.unwrap().state, EvidenceState::Kept);
    assert_agrees_with_disk(
        "after the passes",
        store.status().unwrap().used_bytes,
        dir.path(),
    );
}

/// A reader holds no lock, so a collection may rewrite the pack a live chunk lies in (and
/// delete it) between the reader's look-up and its read: the read follows the chunk to
/// its new pack instead of reporting it missing.
#[test]
fn a_read_follows_a_chunk_moved_by_a_collection_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PausingFs::new();
    let store = Arc::new(Store::open_with_fs(fs.clone(), dir.path(), config(1 << 30)).unwrap());
    let shared = noise(7, 2 << 20);
    let first = store
        .put_blob_bytes(&[noise(8, 2 << 20), shared.clone()].concat())
        .unwrap();
    let second_bytes = [noise(9, 1 << 20), shared].concat();
    let second = store.put_blob_bytes(&second_bytes).unwrap();
    // The first blob goes while a put runs, so nothing is collected yet: the first pack
    // holds garbage and the second blob's shared chunks.
    let (started, go_on, put) = held_put(&store, noise(10, 1 << 20));
    started.recv().unwrap();
    store.release_blob(&first).unwrap();
    go_on.send(()).unwrap();
    put.join().unwrap();

    let (paused, resume) = fs.pause_before_reading("0000000000000001.pack");
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.read_blob_bytes(&second))
    };
    paused.recv().unwrap();
    store.collect_garbage().unwrap();
    assert!(
        !dir.path().join("packs/0000000000000001.pack").exists(),
        "the collection rewrote the first pack"
    );
    resume.send(()).unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), second_bytes);
}
