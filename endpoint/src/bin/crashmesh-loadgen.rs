//! `crashmesh-loadgen`: uploads consolidated reports to an endpoint as fast as it answers,
//! and prints one JSON line: `reports`, `seconds`, `reports_per_s`, `mb_per_s` (bytes on
//! the wire: manifests and compressed chunks), `raw_mb_per_s` (attachment bytes),
//! `p50_ms`, `p99_ms` (one report's whole upload), `errors`.
//!
//! Every report is built (chunked, hashed, compressed) before the clock starts, so the
//! figures are the server's and HTTP's, not the generator's. Each report has its own
//! attachment bytes (nothing deduplicates) and one of `--problems` signatures.
//!
//!     crashmesh-loadgen --url http://127.0.0.1:8470 --token cmt_… --cluster bench \
//!         --reports 5000 --concurrency 32 --attachment-bytes 0
//!
//! `--null`: the server is `crashmesh endpoint run --null`, which answers without doing
//! the work and so never asks for chunks: send every chunk and complete anyway, so both
//! servers see the same requests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crashmesh_endpoint_client::{ChunkData, Client, chunk_blob};
use crashmesh_protocol::report::{
    Attachment, Incident, REPORT_FORMAT_VERSION, ReportManifest, UploadReply,
};
use crashmesh_protocol::{Frame, Problem, ProblemKind};

struct Options {
    url: String,
    token: String,
    cluster: String,
    reports: usize,
    concurrency: usize,
    attachment_bytes: usize,
    problems: usize,
    seed: String,
    term: u64,
    null: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: crashmesh-loadgen --url URL --token TOKEN [--cluster NAME] [--reports N] \
         [--concurrency N] [--attachment-bytes N] [--problems N] [--seed TEXT] [--term N] [--null]"
    );
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut options = Options {
        url: String::new(),
        token: String::new(),
        cluster: "bench".into(),
        reports: 1000,
        concurrency: 16,
        attachment_bytes: 0,
        problems: 100,
        seed: "loadgen".into(),
        term: 1,
        null: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--null" {
            options.null = true;
            continue;
        }
        let Some(value) = args.next() else { usage() };
        let number = || value.parse::<usize>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--url" => options.url = value.clone(),
            "--token" => options.token = value.clone(),
            "--cluster" => options.cluster = value.clone(),
            "--reports" => options.reports = number(),
            "--concurrency" => options.concurrency = number().max(1),
            "--attachment-bytes" => options.attachment_bytes = number(),
            "--problems" => options.problems = number().max(1),
            "--seed" => options.seed = value.clone(),
            "--term" => options.term = number() as u64,
            _ => usage(),
        }
    }
    if options.url.is_empty() {
        usage();
    }
    options
}

/// Bytes that neither compress nor repeat: blake3's output stream.
fn attachment(seed: &str, index: usize, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("{seed}/{index}").as_bytes());
    hasher.finalize_xof().fill(&mut bytes);
    bytes
}

fn build(options: &Options, index: usize) -> (ReportManifest, Vec<ChunkData>, u64) {
    let which = index % options.problems;
    let mut problem = Problem::new(ProblemKind::Core, format!("SIGSEGV in load_{which}"));
    problem.signature = format!("v1:core:load_{which}");
    problem.signal = Some(11);
    problem.executable = Some("/usr/bin/loadgen-target".into());
    problem.frames = (0..16)
        .map(|depth| Frame {
            address: Some(0x5555_0000_0000 + depth * 0x40),
            function: Some(format!("load_{which}_frame_{depth}")),
            module: Some("/usr/bin/loadgen-target".into()),
            offset: Some(depth * 4),
            reliable: true,
            ..Frame::default()
        })
        .collect();
    let node = format!("node-{}", index % 16);
    let mut attachments = Vec::new();
    let mut chunks = Vec::new();
    if options.attachment_bytes > 0 {
        let (blob, blob_chunks) =
            chunk_blob(&attachment(&options.seed, index, options.attachment_bytes));
        attachments.push(Attachment {
            name: format!("{node}/journal.log"),
            blob,
        });
        chunks = blob_chunks;
    }
    let report_id = blake3::hash(format!("{}/report/{index}", options.seed).as_bytes())
        .to_hex()
        .to_string();
    let manifest = ReportManifest {
        format_version: REPORT_FORMAT_VERSION,
        report_id,
        cluster_id: options.cluster.clone(),
        term: options.term,
        customer_id: None,
        signature: problem.signature.clone(),
        kind: problem.kind,
        problem,
        incidents: vec![Incident {
            node: node.clone(),
            time_ms: 1_790_000_000_000 + index as u64 * 1000,
            report_id: format!("{node}:{}-{index}", options.seed),
            version: Some("1.0".into()),
            labels: BTreeMap::from([("loadgen".to_string(), options.seed.clone())]),
        }],
        attachments,
        scrub: None,
        created_ms: 1_790_000_000_000,
    };
    let wire = serde_json::to_vec(&manifest).unwrap().len() as u64
        + chunks
            .iter()
            .map(|chunk| chunk.compressed.len() as u64)
            .sum::<u64>();
    (manifest, chunks, wire)
}

fn refused(what: &str, status: u16, body: &str) -> String {
    format!("{what}: HTTP {status}: {}", &body[..body.len().min(200)])
}

/// One report's upload; with `null`, every chunk is sent and completion always asked.
fn upload(
    client: &Client,
    manifest: &ReportManifest,
    chunks: &[ChunkData],
    null: bool,
) -> Result<(), String> {
    let body = serde_json::to_vec(manifest).unwrap();
    let answer = client
        .post("/api/v1/reports", &body)
        .map_err(|error| error.to_string())?;
    let reply: UploadReply = match answer.reply() {
        Some(reply) if answer.status == 200 || answer.status == 202 => reply,
        _ => return Err(refused("manifest", answer.status, &answer.body)),
    };
    if answer.status == 200 && (!null || chunks.is_empty()) {
        return Ok(());
    }
    let wanted: Vec<&ChunkData> = if null {
        chunks.iter().collect()
    } else {
        chunks
            .iter()
            .filter(|chunk| reply.missing_chunks.contains(&chunk.id))
            .collect()
    };
    for chunk in wanted {
        let answer = client
            .put(&format!("/api/v1/chunks/{}", chunk.id), &chunk.compressed)
            .map_err(|error| error.to_string())?;
        if answer.status != 204 && answer.status != 200 {
            return Err(refused("chunk", answer.status, &answer.body));
        }
    }
    let answer = client
        .post(
            &format!("/api/v1/reports/{}/complete", manifest.report_id),
            b"",
        )
        .map_err(|error| error.to_string())?;
    if answer.status != 200 {
        return Err(refused("complete", answer.status, &answer.body));
    }
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn main() {
    let options = parse_options();
    let reports: Vec<(ReportManifest, Vec<ChunkData>, u64)> = (0..options.reports)
        .map(|index| build(&options, index))
        .collect();
    let wire_bytes: u64 = reports.iter().map(|report| report.2).sum();
    let raw_bytes: u64 = reports.iter().map(|report| report.0.payload_bytes()).sum();
    let next = AtomicUsize::new(0);
    let errors = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let latencies = Mutex::new(Vec::with_capacity(options.reports));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..options.concurrency {
            scope.spawn(|| {
                let client = Client::new(&options.url, &options.token);
                let mut mine = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((manifest, chunks, _)) = reports.get(index) else {
                        break;
                    };
                    let began = Instant::now();
                    match upload(&client, manifest, chunks, options.null) {
                        Ok(()) => mine.push(began.elapsed()),
                        Err(error) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(error);
                        }
                    }
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = latencies.into_inner().unwrap();
    latencies.sort();
    let done = latencies.len() as f64;
    let line = serde_json::json!({
        "reports": latencies.len(),
        "errors": errors.load(Ordering::Relaxed),
        "first_error": first_error.into_inner().unwrap(),
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "concurrency": options.concurrency,
        "attachment_bytes": options.attachment_bytes,
        "reports_per_s": (done / seconds * 10.0).round() / 10.0,
        "mb_per_s": (wire_bytes as f64 / 1e6 / seconds * 10.0).round() / 10.0,
        "raw_mb_per_s": (raw_bytes as f64 / 1e6 / seconds * 10.0).round() / 10.0,
        "p50_ms": (percentile(&latencies, 0.50) * 100.0).round() / 100.0,
        "p99_ms": (percentile(&latencies, 0.99) * 100.0).round() / 100.0,
    });
    println!("{line}");
    if errors.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}
