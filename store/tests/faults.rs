//! Fault injection over many seeds: random puts, incidents, repeats and evictions on a
//! simulated disk that fails operations, tears writes and crashes, then reopen and check
//! the guarantees. Model-based: an in-memory model says what must be there.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crashmesh_protocol::{Problem, ProblemKind};
use crashmesh_store::*;

/// A small deterministic PRNG (splitmix64) for the test's own choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Content with shared regions across blobs (so chunks dedupe) and fresh regions.
fn content(rng: &mut Rng, bases: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if rng.chance(50) {
            let base = &bases[rng.below(bases.len() as u64) as usize];
            out.extend_from_slice(base);
        } else {
            let len = rng.below(200_000) as usize;
            let mut state = rng.next() | 1;
            out.extend((0..len).map(|i| {
                if i % 3 == 0 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                }
                (state >> (i % 3 * 8)) as u8
            }));
        }
    }
    out
}

fn problem(signature: &str) -> Problem {
    let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV");
    problem.signature = signature.to_string();
    problem
}

/// What the test knows must be true.
#[derive(Default)]
struct Model {
    /// Every blob content ever put, by id.
    contents: HashMap<BlobId, Vec<u8>>,
    /// Acknowledged incidents: report id → signature.
    acknowledged: BTreeMap<String, String>,
    /// Acknowledged increments per signature (incidents plus repeats).
    counts: BTreeMap<String, u64>,
}

fn config() -> StoreConfig {
    StoreConfig {
        max_bytes: 6 << 20,
        keep_free_percent: 10,
        max_cores_per_signature: 2,
        max_age_days: 30,
    }
}

fn open_until_ok(fs: &FaultyFs, dir: &Path) -> Store {
    for attempt in 0..50 {
        match Store::open_with_fs(Arc::new(fs.clone()), dir, config()) {
            Ok(store) => return store,
            Err(error) => {
                if attempt > 10 {
                    fs.set_faults(false);
                }
                let _ = error;
                fs.restart();
            }
        }
    }
    panic!("the store never opened");
}

/// Checks every guarantee on a freshly recovered store.
fn verify(store: &Store, model: &Model, seed: u64, exact: bool) {
    for (report_id, signature) in &model.acknowledged {
        let incident = store
            .incident(report_id)
            .unwrap()
            .unwrap_or_else(|| panic!("seed {seed}: acknowledged incident {report_id} lost"));
        let detail = store.problem(&incident.problem_id).unwrap().unwrap();
        assert_eq!(&detail.summary.signature, signature, "seed {seed}");
        for evidence in incident.core.iter().chain(incident.attachments.iter()) {
            if evidence.state == EvidenceState::Kept {
                let bytes = store
                    .read_blob_bytes(&evidence.blob)
                    .unwrap_or_else(|error| {
                        panic!("seed {seed}: kept blob of {report_id} unreadable: {error}")
                    });
                assert_eq!(
                    Some(&bytes),
                    model.contents.get(&evidence.blob),
                    "seed {seed}"
                );
            }
        }
    }
    for summary in store.problems().unwrap() {
        let acknowledged = model.counts.get(&summary.signature).copied().unwrap_or(0);
        if exact {
            assert_eq!(
                summary.count, acknowledged,
                "seed {seed}: {}",
                summary.signature
            );
        } else {
            assert!(
                summary.count >= acknowledged,
                "seed {seed}: count went down"
            );
        }
        assert!(
            summary.cores_kept <= config().max_cores_per_signature,
            "seed {seed}"
        );
    }
    for signature in model.counts.keys() {
        assert!(
            store.problem(signature).unwrap().is_some(),
            "seed {seed}: {signature} lost"
        );
    }
    let report = store.check(false).unwrap();
    assert!(
        report.is_clean(),
        "seed {seed}: check after recovery: {report:?}"
    );
}

fn run_seed(seed: u64, faults: bool) -> FaultCounts {
    let mut rng = Rng(seed);
    // Some disks are smaller than the quota, so ENOSPC and the free-space limit bite.
    let capacity_bytes = match rng.below(10) {
        0..=1 => 2 << 20,
        2 => 3 << 20,
        3..=4 => 12 << 20,
        _ => 256 << 20,
    };
    let fs = FaultyFs::new(FaultConfig {
        seed,
        error_ppm: if faults {
            2_000 + rng.below(20_000) as u32
        } else {
            0
        },
        capacity_bytes,
    });
    let dir = Path::new("/spool");
    let mut store = open_until_ok(&fs, dir);
    fs.set_faults(faults);
    let bases: Vec<Vec<u8>> = (0..3)
        .map(|_| content(&mut rng, &[vec![7u8; 1000]]))
        .collect();
    let mut model = Model::default();
    let mut pinned: Vec<BlobId> = Vec::new();
    let mut next_report = 0u64;
    let mut now_ms = 1_000_000u64;
    let steps = 30 + rng.below(30);
    for _ in 0..steps {
        now_ms += rng.below(3_600_000);
        if faults && rng.chance(8) {
            fs.crash_after(rng.below(200));
        }
        let result: Result<(), StoreError> = match rng.below(10) {
            0..=3 => {
                let bytes = content(&mut rng, &bases);
                match store.put_blob_bytes(&bytes) {
                    Ok(id) => {
                        assert_eq!(id, BlobId::of(&bytes));
                        model.contents.insert(id, bytes);
                        pinned.push(id);
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
            4..=6 => {
                let signature = format!("v1:{:040x}", rng.below(4));
                let core = if !pinned.is_empty() && rng.chance(70) {
                    Some(pinned.remove(rng.below(pinned.len() as u64) as usize))
                } else {
                    None
                };
                let attachments = if !pinned.is_empty() && rng.chance(50) {
                    vec![("log/journal".to_string(), pinned.remove(0))]
                } else {
                    Vec::new()
                };
                // Sometimes repeat an acknowledged report id: it must be a no-op.
                let repeat = !model.acknowledged.is_empty() && rng.chance(10);
                let report_id = if repeat {
                    model.acknowledged.keys().next().unwrap().clone()
                } else {
                    next_report += 1;
                    format!("report-{next_report}")
                };
                let signature = model
                    .acknowledged
                    .get(&report_id)
                    .cloned()
                    .unwrap_or(signature);
                let incident = NewIncident {
                    report_id: report_id.clone(),
                    time_ms: now_ms,
                    node: "node-1".to_string(),
                    problem: problem(&signature),
                    executable: Some("/usr/bin/osd".to_string()),
                    pid: Some(1),
                    uid: Some(0),
                    signal: Some(11),
                    core,
                    core_truncated: false,
                    attachments,
                    labels: BTreeMap::new(),
                };
                match store.record_incident(incident) {
                    Ok(recorded) => {
                        if !repeat && !model.acknowledged.contains_key(&report_id) {
                            model.acknowledged.insert(report_id, signature.clone());
                            *model.counts.entry(signature).or_default() += 1;
                            assert!(recorded.count >= 1);
                        }
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
            7 => {
                let signatures: Vec<String> = model.counts.keys().cloned().collect();
                if signatures.is_empty() {
                    Ok(())
                } else {
                    let signature = signatures[rng.below(signatures.len() as u64) as usize].clone();
                    let extra = 1 + rng.below(5);
                    match store.add_repeat_count(&signature, extra, now_ms) {
                        Ok(_) => {
                            *model.counts.get_mut(&signature).unwrap() += extra;
                            Ok(())
                        }
                        Err(error) => Err(error),
                    }
                }
            }
            _ => match store.enforce_quota(now_ms) {
                Ok(report) => {
                    assert!(
                        report.used_bytes_after <= report.allowed_bytes || report.still_over_quota,
                        "seed {seed}: over quota after enforce: {report:?}"
                    );
                    Ok(())
                }
                Err(error) => Err(error),
            },
        };
        if result.is_err() && (fs.is_crashed() || !faults || rng.chance(60)) {
            // The process dies; a new one starts on what the disk kept.
            drop(store);
            fs.restart();
            store = open_until_ok(&fs, dir);
            pinned.clear();
        }
        // An error that did not crash: unknown blobs are expected after a failed put.
    }
    // Final crash with faults off: everything acknowledged must be there.
    fs.set_faults(false);
    drop(store);
    fs.restart();
    let store = open_until_ok(&fs, dir);
    verify(&store, &model, seed, !faults);
    let report = store.enforce_quota(now_ms).unwrap();
    assert!(
        report.used_bytes_after <= report.allowed_bytes || report.still_over_quota,
        "seed {seed}: {report:?}"
    );
    verify(&store, &model, seed, !faults);
    fs.counts()
}

#[test]
fn without_faults_the_store_matches_the_model_exactly() {
    for seed in 0..40 {
        run_seed(seed, false);
    }
}

#[test]
fn faults_and_crashes_never_lose_acknowledged_incidents_or_show_torn_blobs() {
    let seeds = 300;
    let mut totals = FaultCounts::default();
    for seed in 1000..1000 + seeds {
        let counts = run_seed(seed, true);
        totals.io_errors += counts.io_errors;
        totals.torn_writes += counts.torn_writes;
        totals.no_space += counts.no_space;
        totals.crashes += counts.crashes;
    }
    eprintln!("{seeds} seeds, faults injected: {totals:?}");
    assert!(totals.io_errors > 100 && totals.crashes > 100 && totals.torn_writes > 10);
    assert!(totals.no_space > 0, "no seed ran out of space");
}
