//! The store's benchmark for `bench/run`: chunk-store write throughput against a plain
//! write of the same bytes (both made durable), and the dedup ratio on repeated logs.
//!
//!     cargo run --release -p crashmesh-store --example store_bench -- DIR MIB
//!
//! Prints one JSON object.

use std::io::Write;
use std::time::Instant;

use crashmesh_store::{Store, StoreConfig};

/// Core-like bytes: a quarter random, a quarter text, a quarter zeros, a quarter a short
/// repeating pattern, in 1 MiB stripes (as a process's heap, logs and mappings look).
fn core_like(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(bytes);
    let line =
        b"2026-11-26T15:40:46.123Z node1 vstorage-csd[4242]: chunk 42 replicated to cs#7 ok\n";
    let mut stripe = 0usize;
    while data.len() < bytes {
        let take = (bytes - data.len()).min(1 << 20);
        match stripe % 4 {
            0 => data.extend((0..take).map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })),
            1 => data.extend(line.iter().cycle().take(take)),
            2 => data.extend(std::iter::repeat_n(0u8, take)),
            _ => data.extend((0..take).map(|i| (i % 251) as u8)),
        }
        stripe += 1;
    }
    data
}

fn best_of(runs: usize, mut measure: impl FnMut() -> f64) -> f64 {
    (0..runs).map(|_| measure()).fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: store_bench DIR MIB"));
    let mebibytes: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(256);
    let data = core_like(mebibytes << 20, 7);

    let mut round = 0u64;
    let ours = best_of(3, || {
        round += 1;
        let store_dir = dir.join(format!("store-{round}"));
        let store = Store::open(&store_dir, StoreConfig::default()).expect("open store");
        // A fresh store each round: nothing deduplicates against an earlier round.
        let started = Instant::now();
        store.put_blob(&mut &data[..]).expect("put_blob");
        let elapsed = started.elapsed().as_secs_f64();
        drop(store);
        elapsed
    });
    // Removed only now: ext4 skips inodes freed moments ago when it allocates new ones,
    // so deleting a round's thousands of chunk files right before the next round would
    // charge that round for this benchmark's own clean-up.
    for round in 1..=round {
        let _ = std::fs::remove_dir_all(dir.join(format!("store-{round}")));
    }
    let baseline = best_of(3, || {
        let path = dir.join("plain.bin");
        let started = Instant::now();
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&data).expect("write");
        file.sync_all().expect("fsync");
        let elapsed = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&path);
        elapsed
    });

    // Repeated logs: ten gatherings of a growing log (each the last plus new lines), as
    // ten incidents of one problem bring them.
    let store_dir = dir.join("dedup");
    let store = Store::open(&store_dir, StoreConfig::default()).expect("open store");
    let mut log = String::new();
    let mut logical_bytes = 0u64;
    for incident in 0..10 {
        for line in 0..20_000 {
            log.push_str(&format!(
                "2026-11-26T15:{:02}:{:02}.{:03}Z node1 vstorage-csd[4242]: incident {incident} line {line} chunk {} state ok\n",
                (line / 60) % 60,
                line % 60,
                line % 1000,
                line * 7 % 1009
            ));
        }
        logical_bytes += log.len() as u64;
        store.put_blob_bytes(log.as_bytes()).expect("put log");
    }
    let stored_bytes = store.status().expect("status").used_bytes;
    drop(store);
    let _ = std::fs::remove_dir_all(&store_dir);

    let mib = (mebibytes) as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "store_ingest",
            "ours": (mib / ours * 10.0).round() / 10.0,
            "baseline": (mib / baseline * 10.0).round() / 10.0,
            "baseline_name": "plain write + fsync of the same bytes",
            "unit": "MiB/s",
            "ratio": ((baseline / ours) * 1000.0).round() / 1000.0,
            "goal": ">= 0.5",
            "bytes": data.len(),
            "dedup_logical_bytes": logical_bytes,
            "dedup_stored_bytes": stored_bytes,
            "dedup_ratio": ((logical_bytes as f64 / stored_bytes as f64) * 100.0).round() / 100.0,
        })
    );
}
