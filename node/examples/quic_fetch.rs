//! `bench/run`'s `quic_fetch` row: log fetch throughput over the mesh transport (QUIC,
//! mutual TLS with certificates from the real `cluster init`/`cluster issue` code, on
//! loopback, the mesh's transport limits) against the same bytes over plain TCP on loopback
//! (tokio `TcpStream`), in the same process and the same run.
//!
//!     quic_fetch WORK_DIR SIZE_MIB [RUNS]
//!
//! `ours` is the path a log takes between two nodes: the log cut into chunks of the store's
//! average size, each encoded as a `ChunkData` message (`wire::encode_parts`, on one task,
//! as the mesh actor encodes) sent with `Connection::send_message_parts` one after another
//! (on another, as a member's link task sends), received with `accept_message` (as
//! `read_connection` does) and handed through a queue of the actor mailbox's size to a
//! task that decodes it (`wire::decode_shared`) and checks it against its blake3 id (as the
//! aggregator's actor does before storing it). The store's reads and writes on either side
//! are not in it: the sender starts from the chunks in memory, as the TCP baseline starts
//! from its bytes. `stream_fetch` is the transport's other primitive (`fetch`/`stream_from`:
//! one request, the raw bytes until the end of the stream), for comparison.
//!
//! Prints one JSON line: `bench, ours, baseline, baseline_name, unit (MiB/s), ratio, goal`,
//! plus `stream_fetch`, `stream_fetch_ratio`, `chunk_bytes`, `bytes` and `runs`. Connection
//! setup is outside the timings on both sides; each figure is the fastest of RUNS.
//! `QUIC_FETCH_STATS=1` prints both ends' quinn connection statistics of the stream fetch
//! to stderr (path MTU, losses, congestion window); `QUIC_FETCH_ONLY_MESSAGES=1` skips the
//! stream fetch; `QUIC_FETCH_CHUNK_BYTES=N` sends chunks of N bytes (measured: 128 KiB
//! made 2.1 GiB/s and 512 KiB 2.25, so the per-message cost is small beside the per-byte one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crashmesh_mesh::certs::{self, ClusterPaths};
use crashmesh_mesh::transport::{Connection, MeshTransport, NodeIdentity};
use crashmesh_protocol::wire::{self, ChunkId, ClusterId, Envelope, Message, NodeId, ReportId};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The copy buffer of the TCP baseline, the same size `stream_from` uses.
const BUFFER_BYTES: usize = 1024 * 1024;

fn main() {
    // As the node binary does.
    crashmesh::malloc::tune();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let work = PathBuf::from(
        args.get(1)
            .expect("usage: quic_fetch WORK_DIR SIZE_MIB [RUNS]"),
    );
    let size_mib: usize = args.get(2).map_or(256, |a| a.parse().expect("SIZE_MIB"));
    let runs: usize = args.get(3).map_or(5, |a| a.parse().expect("RUNS"));
    // Both ends and the TCP baseline share one runtime with tokio's default of one worker
    // per core (a node's daemon runs two). Four workers on two cores, as this ran before,
    // had the transfer's tasks preempting each other: 2,900 MiB/s against 3,850 with two,
    // the TCP baseline unchanged.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let row = runtime.block_on(measure(work, size_mib, runs));
    println!("{row}");
}

/// Log-like bytes: timestamped lines with varying numbers, as a storage daemon writes.
fn log_bytes(size_bytes: usize) -> Vec<u8> {
    let mut log = Vec::with_capacity(size_bytes + 256);
    let mut line = 0u64;
    while log.len() < size_bytes {
        let text = format!(
            "2026-11-26T15:40:{:02}.{:06} node-1 vstorage-csd[{}]: chunk {} replica {} ok, latency {} us\n",
            line % 60,
            line * 7919 % 1_000_000,
            1000 + line % 17,
            line * 104_729 % 10_000_000,
            line % 3,
            line * 31 % 5000
        );
        log.extend_from_slice(text.as_bytes());
        line += 1;
    }
    log.truncate(size_bytes);
    log
}

async fn measure(work: PathBuf, size_mib: usize, runs: usize) -> String {
    let log = std::sync::Arc::new(log_bytes(size_mib * 1024 * 1024));
    let messages = best_of(quic_message_seconds(&work, log.clone(), runs)).await;
    // `QUIC_FETCH_ONLY_MESSAGES=1` skips the stream fetch (to profile the message path).
    let stream = if std::env::var_os("QUIC_FETCH_ONLY_MESSAGES").is_some() {
        messages
    } else {
        best_of(quic_fetch_seconds(&work, log.clone(), runs)).await
    };
    let tcp = best_of(tcp_fetch_seconds(log.clone(), runs)).await;
    let mib = log.len() as f64 / (1024.0 * 1024.0);
    let ours = mib / messages.as_secs_f64();
    let stream = mib / stream.as_secs_f64();
    let baseline = mib / tcp.as_secs_f64();
    serde_json::json!({
        "bench": "quic_fetch",
        "ours": round1(ours),
        "baseline": round1(baseline),
        "baseline_name": "plain TCP on loopback (tokio TcpStream, same bytes, same 1 MiB copy buffer)",
        "unit": "MiB/s",
        "ratio": (ours / baseline * 1000.0).round() / 1000.0,
        "goal": ">= 0.5",
        "stream_fetch": round1(stream),
        "stream_fetch_ratio": (stream / baseline * 1000.0).round() / 1000.0,
        "chunk_bytes": chunk_bytes(),
        "bytes": log.len(),
        "runs": runs,
    })
    .to_string()
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The fastest run: the one least disturbed by a noisy machine.
async fn best_of(timings: impl std::future::Future<Output = Vec<Duration>>) -> Duration {
    timings.await.into_iter().min().expect("at least one run")
}

/// Two transports of one cluster (fresh certificates) and a connection between them: the
/// serving side's end, the fetching side's end, and the transports (kept open).
async fn connected_pair(
    work: &std::path::Path,
) -> (
    Connection,
    Connection,
    [MeshTransport; 2],
    tempfile::TempDir,
) {
    let cluster_dir = tempfile::tempdir_in(work).expect("temp dir");
    let paths = ClusterPaths::of_data_dir(cluster_dir.path());
    certs::init_cluster(&paths, Some("bench")).expect("cluster init");
    for node in ["node-1", "node-2"] {
        certs::issue_node(&paths, node, &paths.nodes_dir()).expect("cluster issue");
    }
    let identity =
        |node: &str| NodeIdentity::load(&paths, &paths.nodes_dir(), node).expect("identity");
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let limits = crashmesh_mesh::actor::mesh_transport_limits();
    let server = MeshTransport::bind_with_limits(loopback, identity("node-1"), limits.clone())
        .await
        .expect("bind");
    let client = MeshTransport::bind_with_limits(loopback, identity("node-2"), limits)
        .await
        .expect("bind");
    let server_addr = server.local_addr().expect("addr");
    let (accepted, connected) =
        tokio::join!(server.accept(), client.connect(server_addr, "node-1"));
    let (_, serving) = accepted.expect("a peer");
    let fetching = connected.expect("connect");
    (serving, fetching, [server, client], cluster_dir)
}

/// The bytes of one `ChunkData` message: what the store's chunks of a log are sent as.
const CHUNK_BYTES: usize = crashmesh_store::CHUNK_BYTES_AVG as usize;
/// The chunk size used: `QUIC_FETCH_CHUNK_BYTES` (at most the wire's `CHUNK_BYTES_MAX`), or
/// [`CHUNK_BYTES`].
fn chunk_bytes() -> usize {
    std::env::var("QUIC_FETCH_CHUNK_BYTES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(CHUNK_BYTES)
}

/// Messages received and not yet decoded, at most: the capacity of the mesh actor's
/// mailbox (actix's default, which the actor keeps).
const INBOUND_QUEUE_LEN: usize = 16;

/// `runs` transfers of the whole log as `ChunkData` messages over one connection.
async fn quic_message_seconds(
    work: &std::path::Path,
    log: std::sync::Arc<Vec<u8>>,
    runs: usize,
) -> Vec<Duration> {
    let (serving, fetching, _transports, _dir) = connected_pair(work).await;
    let chunk_bytes = chunk_bytes();
    // The chunks as the sender has them in memory, as the TCP baseline has its bytes (the
    // store's reads are not timed on either side).
    let whole = bytes::Bytes::from(log.to_vec());
    let chunks: std::sync::Arc<Vec<bytes::Bytes>> = std::sync::Arc::new(
        (0..whole.len())
            .step_by(chunk_bytes)
            .map(|start| whole.slice(start..whole.len().min(start + chunk_bytes)))
            .collect(),
    );
    // The ids come from the store's index on a real sender: computed outside the timings.
    let ids: Vec<ChunkId> = chunks.iter().map(|chunk| ChunkId::of(chunk)).collect();
    let report_id = ReportId("bench-log-bundle".into());
    let mut timings = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        // As a node sends: one task encodes the chunks (the actor), another sends what it
        // queued (the member's link task).
        let (queued, mut to_send) = tokio::sync::mpsc::channel::<wire::Encoded>(
            crashmesh_mesh::actor::PEER_SEND_QUEUE_LEN_MAX,
        );
        let encoder = {
            let (chunks, ids, report_id) = (chunks.clone(), ids.clone(), report_id.clone());
            tokio::spawn(async move {
                for (piece, id) in chunks.iter().zip(&ids) {
                    let envelope = Envelope {
                        cluster_id: ClusterId("bench".into()),
                        from: NodeId("node-1".into()),
                        message: Message::ChunkData {
                            report_id: report_id.clone(),
                            chunk_id: *id,
                            bytes: piece.clone(),
                        },
                    };
                    let bytes = wire::encode_parts(&envelope).expect("encode");
                    queued.send(bytes).await.expect("the link runs");
                }
            })
        };
        let send = async {
            while let Some(bytes) = to_send.recv().await {
                serving
                    .send_message_parts(bytes.into_parts())
                    .await
                    .expect("send");
            }
            encoder.await.expect("encoder");
        };
        // As a node receives: one task takes messages off the connection and hands them
        // on (the mesh's `read_connection`), another decodes and checks them (the actor).
        let (handed, mut taken) = tokio::sync::mpsc::channel::<bytes::Bytes>(INBOUND_QUEUE_LEN);
        let count = ids.len();
        let checker = tokio::spawn(async move {
            let mut received = 0usize;
            while let Some(bytes) = taken.recv().await {
                let envelope =
                    wire::decode_shared(&bytes, wire::MESSAGE_BYTES_MAX).expect("decode");
                let Message::ChunkData {
                    chunk_id, bytes, ..
                } = envelope.message
                else {
                    panic!("not a chunk");
                };
                assert_eq!(
                    ChunkId::of(&bytes),
                    chunk_id,
                    "a chunk's bytes match its id"
                );
                received += bytes.len();
            }
            received
        });
        let receive = async {
            for _ in 0..count {
                let bytes = fetching.accept_message().await.expect("a message");
                handed.send(bytes).await.expect("the checker runs");
            }
            drop(handed);
            checker.await.expect("checker")
        };
        let ((), received) = tokio::join!(send, receive);
        timings.push(started.elapsed());
        assert_eq!(received, log.len());
    }
    fetching.close("done");
    timings
}

/// `runs` fetches of the whole log over one mutual-TLS connection, each on a new stream.
async fn quic_fetch_seconds(
    work: &std::path::Path,
    log: std::sync::Arc<Vec<u8>>,
    runs: usize,
) -> Vec<Duration> {
    let (serving, fetching, _transports, _dir) = connected_pair(work).await;
    let expected = log.len() as u64;
    let server = tokio::spawn(async move {
        for _ in 0..runs {
            let request = serving.accept_request().await.expect("a request");
            assert_eq!(request.request, b"fetch log");
            request.stream_from(&mut &log[..]).await.expect("streamed");
        }
        if std::env::var_os("QUIC_FETCH_STATS").is_some() {
            eprintln!("server side: {:#?}", serving.quinn().stats());
        }
    });
    let mut timings = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut sink = tokio::io::sink();
        let started = Instant::now();
        let received = fetching
            .fetch(b"fetch log", &mut sink, u64::MAX)
            .await
            .expect("fetch");
        timings.push(started.elapsed());
        assert_eq!(received, expected);
    }
    if std::env::var_os("QUIC_FETCH_STATS").is_some() {
        eprintln!("{:#?}", fetching.quinn().stats());
    }
    server.await.expect("server task");
    fetching.close("done");
    timings
}

/// `runs` fetches of the same bytes over plain TCP, each on a new connection made before
/// the clock starts.
async fn tcp_fetch_seconds(log: std::sync::Arc<Vec<u8>>, runs: usize) -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let expected = log.len();
    let serving = tokio::spawn(async move {
        for _ in 0..runs {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 9];
            stream.read_exact(&mut request).await.expect("request");
            assert_eq!(&request, b"fetch log");
            for piece in log.chunks(BUFFER_BYTES) {
                stream.write_all(piece).await.expect("write");
            }
            stream.shutdown().await.expect("shutdown");
        }
    });
    let mut timings = Vec::with_capacity(runs);
    let mut buffer = vec![0u8; BUFFER_BYTES];
    for _ in 0..runs {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        stream.write_all(b"fetch log").await.expect("request");
        let mut received = 0usize;
        loop {
            let read = stream.read(&mut buffer).await.expect("read");
            if read == 0 {
                break;
            }
            received += read;
        }
        timings.push(started.elapsed());
        assert_eq!(received, expected);
    }
    serving.await.expect("server task");
    timings
}
