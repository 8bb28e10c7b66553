//! Scrubs a file with the default rules, timed (the `scrub` row of `bench/run`).
//!
//! `scrub_file IN OUT [KEY_HEX]` reads IN in 1 MiB pieces through the line scrubber,
//! writes OUT, and prints one JSON line: `bytes`, `secs` (scrubbing only, I/O excluded),
//! `mb_per_s`, `removed`, `pseudonymized`, `rules`.
//!
//! `scrub_file --rules` prints the built-in rules as JSON (`name`, `pattern`, `action`,
//! `check`), so a baseline can run the very same patterns.

use std::io::Read as _;
use std::time::{Duration, Instant};

use crashmesh_privacy::{PseudonymKey, ScrubConfig, Scrubber};

/// Bytes read per piece.
const PIECE_BYTES: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rules") {
        let rules: Vec<serde_json::Value> = crashmesh_privacy::rules::builtin_rules()
            .iter()
            .map(|rule| {
                serde_json::json!({
                    "name": rule.name,
                    "pattern": rule.pattern,
                    "action": rule.action,
                    "check": format!("{:?}", rule.check).to_ascii_lowercase(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rules));
        return Ok(());
    }
    if args.len() < 3 {
        return Err("usage: scrub_file IN OUT [KEY_HEX]".into());
    }
    let key = match args.get(3) {
        Some(hex) => PseudonymKey::from_hex(hex)?,
        None => PseudonymKey::from_bytes([7; 32]),
    };
    let scrubber = Scrubber::new(&ScrubConfig::default(), key)?;
    let mut input = std::fs::File::open(&args[1])?;
    let mut piece = vec![0u8; PIECE_BYTES];
    let mut out = Vec::new();
    let mut lines = scrubber.lines();
    let mut scrubbing = Duration::ZERO;
    let mut bytes = 0u64;
    loop {
        let read = input.read(&mut piece)?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        let started = Instant::now();
        lines.push(&piece[..read], &mut out);
        scrubbing += started.elapsed();
    }
    let started = Instant::now();
    let counts = lines.finish(&mut out);
    scrubbing += started.elapsed();
    std::fs::write(&args[2], &out)?;
    let secs = scrubbing.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bytes": bytes,
            "secs": secs,
            "mb_per_s": bytes as f64 / 1e6 / secs.max(1e-9),
            "removed": counts.removed,
            "pseudonymized": counts.pseudonymized,
            "rules": counts.rules,
        })
    );
    Ok(())
}
