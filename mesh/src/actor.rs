//! The mesh shell: [`MeshActor`] owns one node's [`Driver`] and moves bytes and timers
//! between it and the world. The driver (in `protocol`) releases the node's outputs in
//! order, holds what follows a vote until it is durable, and builds and pages every
//! message; the actor's [`Shell`] (`MeshShell`) only carries them out: QUIC
//! ([`crate::transport`]), the store, the clock. The simulator and
//! `protocol/tests/cluster.rs` drive the same driver with a simulated network.
//!
//! - **Timers**: one `run_later` to the node's `Node::next_deadline_ms`, rescheduled
//!   after every input; the clock is monotonic (an `Instant`) anchored at the unix time of
//!   the start, so `now_ms` never goes back and still reads as wall time.
//! - **Outbound**: `Transmit { to, bytes }` goes to a per-peer link task with a bounded
//!   queue ([`PEER_SEND_QUEUE_LEN_MAX`]; when full the datagram is dropped — SWIM and the
//!   election tolerate loss). The task keeps one QUIC connection to the member's configured
//!   address, expecting its certificate name, reconnects on demand with backoff
//!   ([`RECONNECT_BACKOFF_MIN_MS`]..[`RECONNECT_BACKOFF_MAX_MS`]), and drops what queued
//!   while the peer was unreachable (stale heartbeats help nobody). A send stuck for
//!   [`SEND_STALL_MS`] drops the connection for a new one: after a partition heals, the
//!   old connection would otherwise wait out QUIC's backed-off probes or its idle timeout.
//! - **Inbound**: the accept loop admits only configured members (the transport already
//!   refused every certificate not of our CA); a reader task per connection hands
//!   `(peer name from the certificate, bytes)` to the actor, with back-pressure (it awaits
//!   the actor's mailbox). `Node::handle_datagram` refusals are logged, rate-limited,
//!   and the node carries on.
//! - **Persist before release**: at a `Persist(vote)` the shell writes the vote on the
//!   blocking pool ([`Store::put_setting`], a redb commit with `Durability::Immediate`)
//!   and the driver stops releasing; once the commit returned, the actor tells the driver
//!   ([`Driver::persisted`]) and releases again. Outputs produced meanwhile stay queued
//!   behind the persist, so nothing after a `Persist` leaves before the vote is on disk. A
//!   failed write is retried; nothing is released until it succeeds.
//! - **Generation**: `max(previous + 1, start time in ms)`, persisted before the node
//!   starts, so it grows across restarts even if the clock is set back.
//! - **Reports and uploads** (`MeshShell`): store work and HTTP run on one worker
//!   thread per node (`run_worker`), in the order the node asked for them, so a
//!   report's chunks are in the store before its upload reads them; each answer goes back
//!   to the node through the actor (`WorkDone`). Node side: `read_report` builds the
//!   incident's report ([`crate::report::build_node_report`]) and answers its chunk
//!   list (the node pages it to the aggregator, or says it is unavailable);
//!   `read_chunks` reads each chunk's uncompressed bytes, [`CHUNK_DATA_BATCH_LEN`] at a
//!   time, and hands them over without a copy (the node sends each as `ChunkData`; the
//!   receiver checks blake3); `uploaded` marks the local problem uploaded and fires the
//!   `uploaded` event. Aggregator side: `chunks_offered` answers the chunks the store
//!   lacks; `store_chunk` → the store; `upload_report`/`upload_incidents` →
//!   [`crate::uploader`] → the node's `upload_finished`. With no `[upload] endpoint`,
//!   uploads are logged and dropped (the consolidation counts the attempt as failed when
//!   its answer times out).
//! - **Peers' logs**: the aggregator asks the log peers for their logs of a new
//!   problem's window (`LogRequest`). A peer waits for the window to pass, gathers it by
//!   its own `[gather]` rules ([`crashmesh_gather::logs::gather_window`]), stores the logs and a
//!   bundle document as blobs ([`crate::report::build_log_bundle`]) and answers with
//!   the bundle's id (the node sends `LogReady`); the aggregator fetches the bundle like a report
//!   (have/want by chunk) and the uploader attaches its logs as `<peer>/peer-logs/…`.
//! - **Feedback**: the endpoint's answer to an upload is kept on the aggregator and sent
//!   to every node with incidents of the problem (`ProblemFeedback`), which keeps it for
//!   `crashmesh problems show`.
//!
//! Restarted peers: a QUIC connection to a process that died stays "open" until its idle
//! timeout. When a member connects to us afresh while our connection to it is older than
//! [`FRESH_CONNECTION_MS`], it has probably restarted: our link reconnects. The age rule
//! keeps two nodes that connect to each other at the same time from resetting each other
//! forever.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{Context as _, Result, bail};
use crashmesh_protocol::cluster::NodeConfig;
use crashmesh_protocol::consolidation::{
    ChunksRequest, LogsRequest, ReportRead, ReportRequest, UploadIncidents, UploadOutcome,
    UploadReport,
};
use crashmesh_protocol::driver::{Answer, Driver, Notice, PersistToken, Persisting, Shell};
use crashmesh_protocol::election::{PersistedVote, Role};
use crashmesh_protocol::membership::MemberState;
use crashmesh_protocol::wire::{
    Announcement, ChunkId as WireChunkId, ClusterId, Encoded, Feedback, NodeId, ReportId,
};
use crashmesh_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crashmesh_capture::clock::{Clock as _, MonotonicClock};

use crate::certs;
use crate::config::{ClusterConfig, UploadConfig};
use crate::transport::{Connection, MeshTransport, NodeIdentity};

/// Datagrams queued per peer while its link sends or connects.
pub const PEER_SEND_QUEUE_LEN_MAX: usize = 256;
/// Announcements queued between the ingest and the mesh actor.
pub const ANNOUNCE_QUEUE_LEN_MAX: usize = 1024;
/// The first wait after a failed connect; doubled per failure.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// The longest wait between connect attempts.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 2_000;
/// How long a connect to a member may take (handshake and admission).
pub const MESH_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// A send that has not gone out after this long means the connection is stuck (after a
/// partition, QUIC's probe timeouts have backed off and the peer gives no stream credit
/// until they fire, up to the idle timeout): the link drops it and reconnects.
pub const SEND_STALL_MS: u64 = 3_000;
/// A mesh connection that receives nothing for this long is closed.
pub const MESH_IDLE_TIMEOUT_MS: u64 = 5_000;
/// Each side of a mesh connection pings this often, so only a cut path goes idle.
pub const MESH_KEEP_ALIVE_MS: u64 = 1_000;
/// A connection younger than this is not reset when the peer connects to us again.
pub const FRESH_CONNECTION_MS: u64 = 2_000;
/// The same kind of refusal or failure is logged at most this often (with a count).
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;
/// How long a failed vote write waits before it is tried again.
pub const PERSIST_RETRY_MS: u64 = 500;
/// The store setting holding the term and vote (JSON of [`PersistedVote`]).
pub const VOTE_SETTING: &str = "mesh.vote.v1";
/// The store setting holding the last generation (decimal).
pub const GENERATION_SETTING: &str = "mesh.generation.v1";

/// Everything the mesh needs, resolved from the configuration (addresses parsed,
/// certificate paths defaulted, names checked) before the daemon starts.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    pub node: NodeId,
    pub listen: SocketAddr,
    /// Every configured member with its address, this node included.
    pub members: Vec<(NodeId, SocketAddr)>,
    pub may_be_aggregator: bool,
    pub ca_cert: PathBuf,
    pub cluster_file: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    /// `[node] labels`, carried by every announcement.
    pub labels: BTreeMap<String, String>,
    /// The node's data directory (upload stats, event scratch).
    pub data_dir: PathBuf,
    /// `[upload]`: where the aggregator sends reports.
    pub upload: UploadConfig,
    /// `[[events]]`: commands run on `uploaded`.
    pub events: Vec<crashmesh_gather::events::EventHook>,
    /// The members asked for their logs of a new problem's window (`[cluster] log_peers`,
    /// every member when empty).
    pub log_peers: Vec<NodeId>,
    /// The peers' log window around a problem's first incident, and how long the report
    /// waits for their logs.
    pub log_window_before_ms: u64,
    pub log_window_after_ms: u64,
    pub log_wait_ms: u64,
    /// `[gather]`: the rules this node answers a peer's log request with.
    pub gather: crashmesh_gather::logs::GatherConfig,
}

/// The parts of the node's configuration the mesh reads.
pub struct NodeParts<'a> {
    /// `[node] name`, or the host name.
    pub node_name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub cluster: &'a ClusterConfig,
    pub upload: &'a UploadConfig,
    pub events: &'a [crashmesh_gather::events::EventHook],
    pub gather: &'a crashmesh_gather::logs::GatherConfig,
}

impl MeshSettings {
    /// The mesh settings of the node's configuration, or `None` when `[cluster] enabled`
    /// is false.
    pub fn from_config(config: NodeParts<'_>, data_dir: &Path) -> Result<Option<MeshSettings>> {
        let cluster = config.cluster;
        if !cluster.enabled {
            return Ok(None);
        }
        let name = config.node_name.to_string();
        if !certs::is_valid_node_name(&name) {
            bail!("[node] name {name:?} is not a valid cluster node name");
        }
        let listen: SocketAddr = cluster
            .listen
            .parse()
            .with_context(|| format!("[cluster] listen {:?}", cluster.listen))?;
        let mut members = Vec::new();
        for member in &cluster.members {
            if !certs::is_valid_node_name(&member.name) {
                bail!("[cluster] member name {:?} is not valid", member.name);
            }
            let address = member
                .address
                .to_socket_addrs()
                .with_context(|| {
                    format!(
                        "[cluster] member {} address {:?}",
                        member.name, member.address
                    )
                })?
                .next()
                .with_context(|| {
                    format!(
                        "[cluster] member {} address {:?} resolves to nothing",
                        member.name, member.address
                    )
                })?;
            members.push((NodeId::new(member.name.clone()), address));
        }
        if !members.iter().any(|(member, _)| member.as_str() == name) {
            bail!("[cluster] members must include this node ({name})");
        }
        let log_peers: Vec<NodeId> = if cluster.log_peers.is_empty() {
            members.iter().map(|(member, _)| member.clone()).collect()
        } else {
            let mut peers = Vec::new();
            for peer in &cluster.log_peers {
                if !members.iter().any(|(member, _)| member.as_str() == peer) {
                    bail!("[cluster] log_peers names {peer:?}, which is not a member");
                }
                peers.push(NodeId::new(peer.clone()));
            }
            peers
        };
        let cluster_dir = certs::ClusterPaths::of_data_dir(data_dir);
        let or_default = |path: &Path, default: PathBuf| {
            if path.as_os_str().is_empty() {
                default
            } else {
                path.to_path_buf()
            }
        };
        Ok(Some(MeshSettings {
            ca_cert: or_default(&cluster.ca_cert, cluster_dir.ca_cert()),
            cluster_file: or_default(&cluster.cluster_file, cluster_dir.cluster_file()),
            node_cert: or_default(
                &cluster.node_cert,
                cluster_dir.nodes_dir().join(format!("{name}.pem")),
            ),
            node_key: or_default(
                &cluster.node_key,
                cluster_dir.nodes_dir().join(format!("{name}.key")),
            ),
            node: NodeId::new(name),
            listen,
            members,
            may_be_aggregator: cluster.aggregator,
            labels: config.labels.clone(),
            data_dir: data_dir.to_path_buf(),
            upload: config.upload.clone(),
            events: config.events.to_vec(),
            log_peers,
            log_window_before_ms: cluster.log_window_before_secs * 1000,
            log_window_after_ms: cluster.log_window_after_secs * 1000,
            log_wait_ms: cluster.log_wait_secs * 1000,
            gather: config.gather.clone(),
        }))
    }

    /// This node's identity: its certificate and key, the CA, the cluster id.
    pub fn identity(&self) -> Result<NodeIdentity> {
        let cluster_id = certs::read_cluster_file(&self.cluster_file)
            .with_context(|| format!("reading {}", self.cluster_file.display()))?
            .cluster_id;
        Ok(NodeIdentity {
            name: self.node.as_str().to_string(),
            cert_chain: certs::load_certs(&self.node_cert)
                .with_context(|| format!("reading {}", self.node_cert.display()))?,
            key: certs::load_key(&self.node_key)
                .with_context(|| format!("reading {}", self.node_key.display()))?,
            ca_roots: certs::load_certs(&self.ca_cert)
                .with_context(|| format!("reading {}", self.ca_cert.display()))?,
            cluster_id,
        })
    }
}

/// What `crashmesh status` shows of the mesh (`--json`: the `cluster` object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshView {
    pub node: String,
    pub cluster_id: String,
    pub term: u64,
    pub aggregator: Option<String>,
    /// `follower`, `candidate` or `aggregator`.
    pub role: String,
    pub members: Vec<MemberView>,
    /// This node's incidents not yet known to be at the endpoint.
    pub pending_incidents: usize,
    /// The problems this node aggregates (empty unless it is the aggregator).
    pub problems: Vec<MeshProblemView>,
}

/// One problem the aggregator holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshProblemView {
    pub signature: String,
    pub at_endpoint: bool,
    pub uploaded_incidents: u64,
    pub pending_incidents: usize,
}

/// One configured member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    /// `alive`, `suspect`, `down`, or `unknown` (never heard from since this node started).
    pub state: String,
}

/// The latest [`MeshView`], shared with the control socket (`None`: the mesh is off).
pub type SharedMeshView = Arc<Mutex<Option<MeshView>>>;

/// Bytes from a member, as the transport authenticated it.
#[derive(Message)]
#[rtype(result = "()")]
struct Inbound {
    peer: NodeId,
    bytes: bytes::Bytes,
}

/// A member opened a connection to us (it may have restarted).
#[derive(Message)]
#[rtype(result = "()")]
struct PeerConnected {
    peer: NodeId,
}

/// Our link connected to a member (first time or after a failure).
#[derive(Message)]
#[rtype(result = "()")]
struct LinkUp {
    peer: NodeId,
}

/// A new incident of this node to announce to the aggregator.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Announce(pub Announcement);

/// What a peer link does next.
enum LinkCommand {
    Send(Encoded),
    /// The peer connected to us afresh: drop our connection unless it is fresh.
    PeerReconnected,
}

/// Logs one kind of trouble at most once per [`REFUSAL_LOG_INTERVAL_MS`], with how many
/// were not logged in between.
#[derive(Default)]
struct RateLimitedLog {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// `Some(suppressed since the last log)` when this one should be logged.
    fn admit(&mut self) -> Option<u64> {
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(REFUSAL_LOG_INTERVAL_MS));
        if due {
            self.last_logged = Some(Instant::now());
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Owns the cluster node's driver; moves its bytes and timers (see the module
/// documentation).
pub struct MeshActor {
    /// The node; its outputs leave through the driver, with [`MeshShell`] as shell.
    driver: Driver,
    /// What the shell works with.
    io: MeshIo,
    cluster_id: String,
    timer: Option<(u64, SpawnHandle)>,
    view: SharedMeshView,
    refusals: RateLimitedLog,
    settings: MeshSettings,
}

/// The actor's means of carrying out the node's outputs: the clock, the store, the links
/// to the members, the worker.
struct MeshIo {
    clock: MonotonicClock,
    store: Arc<Store>,
    transport: Arc<MeshTransport>,
    addresses: HashMap<NodeId, SocketAddr>,
    links: HashMap<NodeId, mpsc::Sender<LinkCommand>>,
    queue_full: RateLimitedLog,
    /// The worker's queue (set when the actor starts).
    worker: Option<std::sync::mpsc::SyncSender<WorkerJob>>,
}

/// Binds the transport, loads the vote, bumps the generation and starts the actor with
/// its accept loop. Must run inside the actix system.
pub async fn start(
    settings: MeshSettings,
    store: Arc<Store>,
    view: SharedMeshView,
) -> Result<Addr<MeshActor>> {
    let identity = settings.identity()?;
    let cluster_id = ClusterId(identity.cluster_id.clone());
    let cluster_id_text = identity.cluster_id.clone();
    let transport = Arc::new(
        MeshTransport::bind_with_limits(settings.listen, identity, mesh_transport_limits())
            .await
            .with_context(|| format!("binding the mesh endpoint on {}", settings.listen))?,
    );
    let (persisted, generation) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || load_vote_and_bump_generation(&store))
            .await
            .context("loading the mesh state")??
    };
    let clock = MonotonicClock::new();
    let member_ids: Vec<NodeId> = settings.members.iter().map(|(id, _)| id.clone()).collect();
    let mut config = NodeConfig::new(settings.node.clone(), cluster_id, member_ids, generation);
    config.election.may_be_aggregator = settings.may_be_aggregator;
    config.consolidation.log_peers = settings.log_peers.clone();
    config.consolidation.log_window_before_ms = settings.log_window_before_ms;
    config.consolidation.log_window_after_ms = settings.log_window_after_ms;
    config.consolidation.log_wait_ms = settings.log_wait_ms;
    let seed = generation ^ u64::from(std::process::id()).rotate_left(32);
    let driver = Driver::new(config, persisted.clone(), seed, clock.now_ms())
        .context("the cluster configuration")?;
    tracing::info!(
        node = %settings.node, listen = %transport.local_addr()?, generation,
        term = persisted.term, members = settings.members.len(),
        may_be_aggregator = settings.may_be_aggregator, "mesh started"
    );
    let addresses = settings.members.iter().cloned().collect();
    let (store_for_start, settings_for_start) = (store.clone(), settings.clone());
    let accept_transport = transport.clone();
    let members: Vec<NodeId> = settings.members.iter().map(|(id, _)| id.clone()).collect();
    let actor = MeshActor {
        driver,
        io: MeshIo {
            clock,
            store,
            transport,
            addresses,
            links: HashMap::new(),
            queue_full: RateLimitedLog::default(),
            worker: None,
        },
        cluster_id: cluster_id_text,
        timer: None,
        view,
        refusals: RateLimitedLog::default(),
        settings: settings.clone(),
    }
    .start();
    tokio::spawn(accept_loop(accept_transport, members, actor.clone()));
    announce_pending_at_start(store_for_start, settings_for_start, actor.clone());
    Ok(actor)
}

/// Incidents re-announced at start at most (older ones wait for a later slice).
pub const ANNOUNCE_AT_START_MAX: usize = 1024;

/// Re-announces this node's incidents of problems not yet at the endpoint (the spool
/// kept them while the node or the aggregator was down). Announcements are idempotent by
/// report id, so one the aggregator already has costs a message, nothing more.
/// Known gap: a problem marked uploaded is skipped whole, so an incident of it recorded
/// after the mark and not announced before a restart waits until the next incident.
fn announce_pending_at_start(store: Arc<Store>, settings: MeshSettings, actor: Addr<MeshActor>) {
    tokio::spawn(async move {
        let found =
            tokio::task::spawn_blocking(move || pending_announcements(&store, &settings)).await;
        let announcements = match found {
            Ok(Ok(announcements)) => announcements,
            Ok(Err(error)) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot list the incidents to re-announce");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot list the incidents to re-announce");
                return;
            }
        };
        if !announcements.is_empty() {
            tracing::info!(
                count = announcements.len(),
                "re-announcing incidents not yet at the endpoint"
            );
        }
        for announcement in announcements {
            if actor.send(Announce(announcement)).await.is_err() {
                return;
            }
        }
    });
}

fn pending_announcements(store: &Store, settings: &MeshSettings) -> Result<Vec<Announcement>> {
    let node = settings.node.as_str();
    let mut announcements = Vec::new();
    for summary in store.problems()? {
        if !matches!(summary.upload, crashmesh_store::UploadState::Pending) {
            continue;
        }
        let Some(detail) = store.problem(&summary.id)? else {
            continue;
        };
        for incident in detail
            .incidents
            .iter()
            .filter(|incident| incident.node == node)
        {
            if announcements.len() >= ANNOUNCE_AT_START_MAX {
                return Ok(announcements);
            }
            announcements.push(crate::report::announcement(
                &settings.node,
                &settings.labels,
                incident,
                &detail.problem,
            ));
        }
    }
    Ok(announcements)
}

/// The transport's defaults, but a short connect timeout: a member that is down (or not
/// started yet) must not hold its link for long — QUIC gets no "port unreachable", so a
/// connect to a dead peer only ends at the timeout, and the handshake's retransmission
/// (about 1 s after the first try) still fits when the peer was merely starting. And a
/// short idle timeout with frequent keep-alives: a connection across a partition dies
/// within [`MESH_IDLE_TIMEOUT_MS`], so when the partition heals the link connects afresh
/// at once instead of waiting for QUIC's backed-off probes on a connection whose
/// congestion window collapsed (measured: up to 60 s before the minority's incidents
/// reached the aggregator).
pub fn mesh_transport_limits() -> crate::transport::TransportLimits {
    crate::transport::TransportLimits {
        connect_timeout: Duration::from_millis(MESH_CONNECT_TIMEOUT_MS),
        idle_timeout: Duration::from_millis(MESH_IDLE_TIMEOUT_MS),
        keep_alive_interval: Duration::from_millis(MESH_KEEP_ALIVE_MS),
        ..Default::default()
    }
}

/// The persisted vote (default when none) and the new generation, made durable.
fn load_vote_and_bump_generation(store: &Store) -> Result<(PersistedVote, u64)> {
    let vote = match store.get_setting(VOTE_SETTING)? {
        Some(bytes) => {
            serde_json::from_slice(&bytes).context("the persisted vote is unreadable")?
        }
        None => PersistedVote::default(),
    };
    let previous: u64 = match store.get_setting(GENERATION_SETTING)? {
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .context("the persisted generation is unreadable")?,
        None => 0,
    };
    let generation = (previous + 1).max(crashmesh_capture::clock::now_ms());
    store.put_setting(GENERATION_SETTING, generation.to_string().as_bytes())?;
    Ok((vote, generation))
}

/// Hands the receiver of [`announcement_channel`] to the actor.
pub fn forward_announcements(mut receiver: mpsc::Receiver<Announcement>, actor: Addr<MeshActor>) {
    tokio::spawn(async move {
        while let Some(announcement) = receiver.recv().await {
            if actor.send(Announce(announcement)).await.is_err() {
                return;
            }
        }
    });
}

/// The bounded queue from the ingest (which runs on the blocking pool) to the mesh.
pub fn announcement_channel() -> (mpsc::Sender<Announcement>, mpsc::Receiver<Announcement>) {
    mpsc::channel(ANNOUNCE_QUEUE_LEN_MAX)
}

impl Actor for MeshActor {
    type Context = actix::Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        let (sender, receiver) = std::sync::mpsc::sync_channel(WORKER_QUEUE_LEN_MAX);
        let worker = Worker {
            store: self.io.store.clone(),
            node: self.driver.node().id().as_str().to_string(),
            settings: self.settings.clone(),
            actor: context.address(),
            runtime: tokio::runtime::Handle::current(),
            offered: HashMap::new(),
            offered_order: std::collections::VecDeque::new(),
            log_bundles: HashMap::new(),
            log_bundles_order: std::collections::VecDeque::new(),
            uploader: None,
        };
        let spawned = std::thread::Builder::new()
            .name("mesh-worker".to_string())
            .spawn(move || run_worker(worker, receiver));
        match spawned {
            Ok(_) => self.io.worker = Some(sender),
            Err(error) => tracing::error!(%error, "cannot start the mesh worker; reports stay put"),
        }
        self.pump(context);
    }
}

impl Handler<Inbound> for MeshActor {
    type Result = ();

    fn handle(&mut self, message: Inbound, context: &mut Self::Context) {
        let now_ms = self.io.clock.now_ms();
        if let Err(error) =
            self.driver
                .node_mut()
                .handle_datagram(now_ms, &message.peer, &message.bytes)
            && let Some(suppressed) = self.refusals.admit()
        {
            tracing::warn!(peer = %message.peer, %error, suppressed, "refused a mesh datagram");
        }
        self.pump(context);
    }
}

impl Handler<PeerConnected> for MeshActor {
    type Result = ();

    fn handle(&mut self, message: PeerConnected, context: &mut Self::Context) {
        if let Some(link) = self.io.links.get(&message.peer) {
            let _ = link.try_send(LinkCommand::PeerReconnected);
        }
        let now_ms = self.io.clock.now_ms();
        self.driver.node_mut().peer_reachable(now_ms, &message.peer);
        self.pump(context);
    }
}

impl Handler<LinkUp> for MeshActor {
    type Result = ();

    fn handle(&mut self, message: LinkUp, context: &mut Self::Context) {
        let now_ms = self.io.clock.now_ms();
        self.driver.node_mut().peer_reachable(now_ms, &message.peer);
        self.pump(context);
    }
}

impl Handler<Announce> for MeshActor {
    type Result = ();

    fn handle(&mut self, Announce(announcement): Announce, context: &mut Self::Context) {
        let report_id = announcement.report_id.clone();
        let now_ms = self.io.clock.now_ms();
        match self.driver.node_mut().announce(now_ms, announcement) {
            Ok(()) => tracing::debug!(report = %report_id.0, "incident announced"),
            // The incident stays in the store; announcing what the spool holds at start
            // comes with the next slice (re-announcement of not-yet-uploaded incidents).
            Err(error) => tracing::warn!(report = %report_id.0, %error, "incident not announced"),
        }
        self.pump(context);
    }
}

impl MeshActor {
    /// Releases the node's outputs through the driver (it stops at a vote not yet
    /// durable), then publishes the view and re-arms the timer.
    fn pump(&mut self, context: &mut actix::Context<Self>) {
        let now_ms = self.io.clock.now_ms();
        let mut shell = MeshShell {
            io: &mut self.io,
            context,
        };
        self.driver.release(now_ms, &mut shell);
        self.publish_view();
        self.arm_timer(context);
    }

    fn publish_view(&mut self) {
        let status = self.driver.node().status();
        let mut states: HashMap<&NodeId, (u64, MemberState)> = HashMap::new();
        for member in &status.members {
            let entry = states
                .entry(&member.node)
                .or_insert((member.generation, member.state));
            if member.generation >= entry.0 {
                *entry = (member.generation, member.state);
            }
        }
        let members = self
            .driver
            .node()
            .election()
            .members()
            .iter()
            .map(|member| MemberView {
                name: member.as_str().to_string(),
                state: match states.get(member) {
                    Some((_, MemberState::Alive)) => "alive",
                    Some((_, MemberState::Suspect)) => "suspect",
                    Some((_, MemberState::Down)) => "down",
                    None => "unknown",
                }
                .to_string(),
            })
            .collect();
        let view = MeshView {
            node: self.driver.node().id().as_str().to_string(),
            cluster_id: self.cluster_id.clone(),
            term: status.term,
            aggregator: status.aggregator.map(|node| node.as_str().to_string()),
            role: match status.role {
                Role::Follower => "follower",
                Role::PreCandidate => "pre-candidate",
                Role::Candidate => "candidate",
                Role::Aggregator => "aggregator",
            }
            .to_string(),
            members,
            pending_incidents: status.pending_incidents,
            problems: status
                .problems
                .into_iter()
                .map(|problem| MeshProblemView {
                    signature: problem.signature,
                    at_endpoint: problem.at_endpoint,
                    uploaded_incidents: problem.uploaded_count,
                    pending_incidents: problem.pending_count,
                })
                .collect(),
        };
        *self
            .view
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(view);
    }

    /// One timer, at the node's next deadline.
    fn arm_timer(&mut self, context: &mut actix::Context<Self>) {
        let deadline_ms = self.driver.node().next_deadline_ms();
        if let Some((armed_ms, handle)) = self.timer {
            if armed_ms == deadline_ms {
                return;
            }
            context.cancel_future(handle);
        }
        let delay = Duration::from_millis(deadline_ms.saturating_sub(self.io.clock.now_ms()));
        let handle = context.run_later(delay, |actor, context| {
            actor.timer = None;
            let now_ms = actor.io.clock.now_ms();
            actor.driver.node_mut().handle_timeout(now_ms);
            actor.pump(context);
        });
        self.timer = Some((deadline_ms, handle));
    }
}

/// The daemon's [`Shell`] for the length of one release: the actor's I/O and its context
/// (to spawn the vote's write and to wait for a log window).
struct MeshShell<'a> {
    io: &'a mut MeshIo,
    context: &'a mut actix::Context<MeshActor>,
}

impl Shell for MeshShell<'_> {
    fn stopped(&self) -> bool {
        false
    }

    /// Writes the vote on the blocking pool; the driver holds everything after it until
    /// the commit returned ([`write_vote`]).
    fn persist(&mut self, token: PersistToken, vote: &PersistedVote) -> Persisting {
        write_vote(self.io.store.clone(), token, vote.clone(), self.context);
        Persisting::Pending
    }

    fn transmit(&mut self, to: NodeId, bytes: Encoded) {
        let Some(&address) = self.io.addresses.get(&to) else {
            tracing::warn!(peer = %to, "a datagram for a node that is not a configured member dropped");
            return;
        };
        let transport = &self.io.transport;
        let actor = self.context.address();
        let link = self.io.links.entry(to.clone()).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(PEER_SEND_QUEUE_LEN_MAX);
            tokio::spawn(peer_link(
                transport.clone(),
                to.clone(),
                address,
                receiver,
                actor.clone().recipient(),
                actor.recipient(),
            ));
            sender
        });
        if link.try_send(LinkCommand::Send(bytes)).is_err()
            && let Some(suppressed) = self.io.queue_full.admit()
        {
            tracing::warn!(peer = %to, suppressed, "the peer's send queue is full; datagram dropped");
        }
    }

    fn read_report(&mut self, request: ReportRequest) -> Answer<ReportRead> {
        self.io.send_job(WorkerJob::ReadReport(request));
        Answer::Later
    }

    fn read_chunks(&mut self, request: ChunksRequest) -> Answer<Vec<(WireChunkId, bytes::Bytes)>> {
        self.io.send_job(WorkerJob::ReadChunks(request));
        Answer::Later
    }

    fn gather_logs(&mut self, request: LogsRequest) -> Answer<Option<ReportId>> {
        // The window reaches past the problem: answer once it has passed.
        let wait_ms = request
            .window_end_ms
            .saturating_sub(self.io.clock.now_ms())
            .min(LOG_SERVE_DELAY_MS_MAX);
        let job = WorkerJob::GatherLogs(request);
        if wait_ms > 0 {
            self.context
                .run_later(Duration::from_millis(wait_ms), move |actor, _| {
                    actor.io.send_job(job)
                });
        } else {
            self.io.send_job(job);
        }
        Answer::Later
    }

    fn chunks_offered(
        &mut self,
        report_id: ReportId,
        chunk_ids: Vec<WireChunkId>,
    ) -> Answer<Vec<WireChunkId>> {
        self.io.send_job(WorkerJob::ChunksOffered {
            report_id,
            chunk_ids,
        });
        Answer::Later
    }

    fn store_chunk(&mut self, report_id: ReportId, chunk_id: WireChunkId, bytes: bytes::Bytes) {
        self.io.send_job(WorkerJob::StoreChunk {
            report_id,
            chunk_id,
            bytes,
        });
    }

    fn upload_report(&mut self, upload: UploadReport) {
        self.io.send_job(WorkerJob::UploadReport(upload));
    }

    fn upload_incidents(&mut self, upload: UploadIncidents) {
        self.io.send_job(WorkerJob::UploadIncidents(upload));
    }

    fn uploaded(&mut self, report_id: ReportId) {
        self.io.send_job(WorkerJob::MarkUploaded { report_id });
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::AggregatorChanged { term, aggregator } => {
                tracing::info!(term, aggregator = ?aggregator.as_ref().map(|node| node.as_str()), "aggregator changed")
            }
            Notice::MemberUp(node) => tracing::info!(member = %node, "member up"),
            Notice::MemberDown(node) => tracing::info!(member = %node, "member down"),
            Notice::Rejoined { generation } => {
                tracing::info!(generation, "declared down by the cluster; rejoined")
            }
            Notice::Fenced { term } => {
                tracing::warn!(term, "the endpoint fenced this aggregator's term")
            }
            Notice::Feedback {
                signature,
                feedback,
            } => self.io.send_job(WorkerJob::Feedback {
                signature,
                feedback,
            }),
            Notice::AnswerRefused(error) => {
                tracing::warn!(%error, "a report message was not sent")
            }
        }
    }
}

impl MeshIo {
    /// Hands a job to the worker (dropped, and logged, when its queue is full).
    fn send_job(&mut self, job: WorkerJob) {
        let Some(worker) = &self.worker else {
            tracing::warn!(?job, "dropped: the mesh worker is not running");
            return;
        };
        // A full queue drops the job: every one is retried by the consolidation (fetches
        // and uploads time out and start again), except `MarkUploaded`, which only
        // updates local bookkeeping.
        if let Err(error) = worker.try_send(job) {
            tracing::warn!(%error, "the mesh worker's queue is full; job dropped");
        }
    }
}

/// Writes `vote` durably on the blocking pool (a redb commit with
/// `Durability::Immediate`) and tells the driver once it is on disk; a failed write is
/// tried again after [`PERSIST_RETRY_MS`], and until then nothing after the vote leaves.
fn write_vote(
    store: Arc<Store>,
    token: PersistToken,
    vote: PersistedVote,
    context: &mut actix::Context<MeshActor>,
) {
    let bytes = serde_json::to_vec(&vote).expect("a vote serializes");
    let write = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.put_setting(VOTE_SETTING, &bytes))
    };
    context.spawn(actix::fut::wrap_future(write).map(
        move |result, actor: &mut MeshActor, context| {
            let error = match result {
                Ok(Ok(())) => {
                    tracing::debug!(term = vote.term, voted_for = ?vote.voted_for, "vote persisted");
                    if let Err(error) = actor.driver.persisted(token) {
                        tracing::error!(%error, "a vote persisted that the mesh did not wait for");
                    }
                    actor.pump(context);
                    return;
                }
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            tracing::error!(%error, term = vote.term, "cannot persist the vote; retrying, the mesh waits");
            context.run_later(
                Duration::from_millis(PERSIST_RETRY_MS),
                move |_, context| write_vote(store, token, vote, context),
            );
        },
    ));
}

/// Jobs queued per node for the worker (store work and uploads).
pub const WORKER_QUEUE_LEN_MAX: usize = 4096;
/// Chunks the worker reads and hands the actor at once (each goes as one `ChunkData`).
pub const CHUNK_DATA_BATCH_LEN: usize = 8;
/// Offered chunk lists the worker remembers for uploads.
pub const OFFERED_REPORTS_LEN_MAX: usize = 1024;
/// Log bundles a node keeps ready for the aggregator to fetch.
pub const LOG_BUNDLES_LEN_MAX: usize = 256;
/// The longest a log request waits for its window to pass.
pub const LOG_SERVE_DELAY_MS_MAX: u64 = 120_000;

/// What the worker does for the actor, in order.
enum WorkerJob {
    ReadReport(ReportRequest),
    ReadChunks(ChunksRequest),
    MarkUploaded {
        report_id: ReportId,
    },
    ChunksOffered {
        report_id: ReportId,
        chunk_ids: Vec<WireChunkId>,
    },
    StoreChunk {
        report_id: ReportId,
        chunk_id: WireChunkId,
        bytes: bytes::Bytes,
    },
    UploadReport(UploadReport),
    UploadIncidents(UploadIncidents),
    GatherLogs(LogsRequest),
    Feedback {
        signature: String,
        feedback: Feedback,
    },
}

impl std::fmt::Debug for WorkerJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerJob::ReadReport(request) => write!(f, "ReadReport({})", request.report_id),
            WorkerJob::ReadChunks(request) => write!(
                f,
                "ReadChunks({}, {} chunks)",
                request.report_id,
                request.chunk_ids.len()
            ),
            WorkerJob::MarkUploaded { report_id } => write!(f, "MarkUploaded({report_id})"),
            WorkerJob::ChunksOffered {
                report_id,
                chunk_ids,
            } => {
                write!(f, "ChunksOffered({report_id}, {} chunks)", chunk_ids.len())
            }
            WorkerJob::StoreChunk { report_id, .. } => write!(f, "StoreChunk({report_id})"),
            WorkerJob::UploadReport(upload) => write!(f, "UploadReport({})", upload.signature),
            WorkerJob::UploadIncidents(upload) => {
                write!(f, "UploadIncidents({})", upload.signature)
            }
            WorkerJob::GatherLogs(request) => write!(f, "GatherLogs({})", request.signature),
            WorkerJob::Feedback { signature, .. } => write!(f, "Feedback({signature})"),
        }
    }
}

/// What the worker hands back to the actor: the answers the node waits for.
#[derive(Message)]
#[rtype(result = "()")]
enum WorkDone {
    ReportRead {
        request: ReportRequest,
        read: ReportRead,
    },
    ChunksRead {
        to: NodeId,
        report_id: ReportId,
        chunks: Vec<(WireChunkId, bytes::Bytes)>,
    },
    LogsGathered {
        request: LogsRequest,
        bundle: Option<ReportId>,
    },
    ChunksMissing {
        report_id: ReportId,
        missing: Vec<WireChunkId>,
    },
    UploadFinished {
        upload_id: u64,
        outcome: UploadOutcome,
        /// The endpoint's answer, passed on to the problem's nodes.
        feedback: Option<(String, Feedback)>,
    },
}

impl Handler<WorkDone> for MeshActor {
    type Result = ();

    fn handle(&mut self, done: WorkDone, context: &mut Self::Context) {
        let now_ms = self.io.clock.now_ms();
        let node = self.driver.node_mut();
        let answered = match done {
            WorkDone::ReportRead { request, read } => node.report_read(now_ms, request, read),
            WorkDone::ChunksRead {
                to,
                report_id,
                chunks,
            } => node.chunks_read(now_ms, &to, &report_id, chunks),
            WorkDone::LogsGathered { request, bundle } => {
                node.logs_gathered(now_ms, request, bundle)
            }
            WorkDone::ChunksMissing { report_id, missing } => {
                node.chunks_missing(now_ms, &report_id, missing);
                Ok(())
            }
            WorkDone::UploadFinished {
                upload_id,
                outcome,
                feedback,
            } => {
                node.upload_finished(now_ms, upload_id, outcome);
                if let Some((signature, feedback)) = feedback {
                    node.upload_feedback(now_ms, &signature, feedback);
                }
                Ok(())
            }
        };
        if let Err(error) = answered {
            tracing::warn!(%error, "a report message was not sent");
        }
        self.pump(context);
    }
}

/// The worker's state: the store, the uploader, the chunk lists offered for uploads.
struct Worker {
    store: Arc<Store>,
    node: String,
    settings: MeshSettings,
    actor: Addr<MeshActor>,
    /// To wait for the actor from this plain thread (back-pressure on chunk data).
    runtime: tokio::runtime::Handle,
    offered: HashMap<ReportId, Vec<WireChunkId>>,
    offered_order: std::collections::VecDeque<ReportId>,
    /// Log bundles gathered for the aggregator, served like reports (oldest first out).
    log_bundles: HashMap<ReportId, crate::report::NodeReport>,
    log_bundles_order: std::collections::VecDeque<ReportId>,
    /// Built on the first upload (`None` inside: no endpoint configured).
    uploader: Option<Option<crate::uploader::Uploader>>,
}

/// Runs jobs one after the other until the actor is gone.
fn run_worker(mut worker: Worker, jobs: std::sync::mpsc::Receiver<WorkerJob>) {
    while let Ok(job) = jobs.recv() {
        let described = format!("{job:?}");
        let started = std::time::Instant::now();
        tracing::debug!(job = %described, "mesh job started");
        if let Err(error) = worker.run(job) {
            tracing::warn!(job = %described, error = %format!("{error:#}"), "mesh job failed");
        }
        tracing::debug!(job = %described, elapsed_ms = started.elapsed().as_millis() as u64, "mesh job done");
    }
}

impl Worker {
    fn run(&mut self, job: WorkerJob) -> Result<()> {
        match job {
            WorkerJob::ReadReport(request) => {
                let read = match self.log_bundles.get(&request.report_id) {
                    Some(bundle) => report_found(bundle),
                    None => match crate::report::build_node_report(
                        &self.store,
                        &request.report_id.0,
                        &self.node,
                    )? {
                        Some(report) => report_found(&report),
                        None => ReportRead::Unavailable,
                    },
                };
                if let ReportRead::Found { chunk_ids, .. } = &read {
                    tracing::debug!(report = %request.report_id, chunks = chunk_ids.len(), aggregator = %request.to, "serving a report");
                }
                self.actor.do_send(WorkDone::ReportRead { request, read });
            }
            WorkerJob::ReadChunks(ChunksRequest {
                to,
                report_id,
                chunk_ids,
            }) => {
                // Read a few at a time, each batch handed over only once the actor took
                // the previous one: at most two batches are in memory here.
                let mut chunks = Vec::new();
                for chunk_id in chunk_ids {
                    match self.store.chunk_raw(&crate::report::from_wire(&chunk_id)) {
                        Ok(bytes) => chunks.push((chunk_id, bytes::Bytes::from(bytes))),
                        Err(error) => {
                            tracing::warn!(report = %report_id, %error, "a wanted chunk cannot be read");
                        }
                    }
                    if chunks.len() >= CHUNK_DATA_BATCH_LEN {
                        let batch = WorkDone::ChunksRead {
                            to: to.clone(),
                            report_id: report_id.clone(),
                            chunks: std::mem::take(&mut chunks),
                        };
                        if self.runtime.block_on(self.actor.send(batch)).is_err() {
                            return Ok(());
                        }
                    }
                }
                if !chunks.is_empty() {
                    self.actor.do_send(WorkDone::ChunksRead {
                        to,
                        report_id,
                        chunks,
                    });
                }
            }
            WorkerJob::MarkUploaded { report_id } => self.mark_uploaded(&report_id)?,
            WorkerJob::ChunksOffered {
                report_id,
                chunk_ids,
            } => {
                let store_ids: Vec<_> = chunk_ids.iter().map(crate::report::from_wire).collect();
                let missing = self.store.missing_chunks(&store_ids)?;
                if !self.offered.contains_key(&report_id) {
                    self.offered_order.push_back(report_id.clone());
                    while self.offered_order.len() > OFFERED_REPORTS_LEN_MAX {
                        if let Some(oldest) = self.offered_order.pop_front() {
                            self.offered.remove(&oldest);
                        }
                    }
                }
                self.offered.insert(report_id.clone(), chunk_ids);
                tracing::debug!(report = %report_id, missing = missing.len(), "chunks offered");
                self.actor.do_send(WorkDone::ChunksMissing {
                    report_id,
                    missing: missing.iter().map(crate::report::to_wire).collect(),
                });
            }
            WorkerJob::StoreChunk {
                report_id,
                chunk_id,
                bytes,
            } => {
                self.store
                    .put_chunk_raw(&crate::report::from_wire(&chunk_id), &bytes)
                    .with_context(|| format!("storing a chunk of report {report_id}"))?;
            }
            WorkerJob::UploadReport(upload) => {
                let Some(chunk_ids) = self.offered.get(&upload.first.report_id).cloned() else {
                    tracing::warn!(report = %upload.first.report_id, "no chunk list for the report to upload; retried later");
                    self.actor.do_send(WorkDone::UploadFinished {
                        upload_id: upload.upload_id,
                        outcome: UploadOutcome::Retry,
                        feedback: None,
                    });
                    return Ok(());
                };
                let store_ids: Vec<_> = chunk_ids.iter().map(crate::report::from_wire).collect();
                let peer_logs: Vec<(String, Vec<crashmesh_store::ChunkId>)> = upload
                    .peer_logs
                    .iter()
                    .filter_map(|(peer, bundle)| {
                        let chunk_ids = self.offered.get(bundle)?;
                        Some((
                            peer.as_str().to_string(),
                            chunk_ids.iter().map(crate::report::from_wire).collect(),
                        ))
                    })
                    .collect();
                let Some(uploader) = self.uploader()? else {
                    tracing::info!(signature = %upload.signature, "dropped: no [upload] endpoint configured");
                    return Ok(());
                };
                let finished = uploader.upload_report(&upload, &store_ids, &peer_logs);
                let feedback = finished.reply.as_ref().map(|reply| {
                    uploader.record_reply(&upload.signature, reply);
                    (
                        upload.signature.clone(),
                        crate::uploader::feedback_of(reply),
                    )
                });
                self.actor.do_send(WorkDone::UploadFinished {
                    upload_id: upload.upload_id,
                    outcome: finished.outcome,
                    feedback,
                });
            }
            WorkerJob::UploadIncidents(upload) => {
                let Some(uploader) = self.uploader()? else {
                    tracing::info!(signature = %upload.signature, "dropped: no [upload] endpoint configured");
                    return Ok(());
                };
                let finished = uploader.upload_incidents(&upload);
                let feedback = finished.reply.as_ref().map(|reply| {
                    uploader.record_reply(&upload.signature, reply);
                    (
                        upload.signature.clone(),
                        crate::uploader::feedback_of(reply),
                    )
                });
                self.actor.do_send(WorkDone::UploadFinished {
                    upload_id: upload.upload_id,
                    outcome: finished.outcome,
                    feedback,
                });
            }
            WorkerJob::GatherLogs(request) => self.gather_logs(request)?,
            WorkerJob::Feedback {
                signature,
                feedback,
            } => crate::uploader::record_feedback(&self.store, &signature, &feedback),
        }
        Ok(())
    }

    /// Gathers this node's logs of a peer's problem window into a bundle the aggregator
    /// fetches like a report, and answers with its id (none when nothing was found).
    fn gather_logs(&mut self, request: LogsRequest) -> Result<()> {
        let bundle_id = ReportId::new(format!(
            "logs.{}.{}",
            self.node,
            &blake3::hash(
                format!(
                    "{}/{}/{}",
                    request.signature, request.window_start_ms, request.window_end_ms
                )
                .as_bytes()
            )
            .to_hex()[..24]
        ));
        let bundle = if self.log_bundles.contains_key(&bundle_id) {
            Some(bundle_id.clone())
        } else {
            let window = crashmesh_gather::logs::Window {
                from_ms: request.window_start_ms,
                to_ms: request.window_end_ms,
                problem_ms: request
                    .window_end_ms
                    .saturating_sub(self.settings.log_window_after_ms)
                    .max(request.window_start_ms),
            };
            let gathered = crashmesh_gather::logs::gather_window(
                &self.settings.gather,
                &request.kind.to_string(),
                None,
                window,
                crashmesh_capture::clock::now_ms(),
            );
            match crate::report::build_log_bundle(
                &self.store,
                &bundle_id.0,
                &self.node,
                &request.signature,
                window,
                gathered,
            )? {
                None => None,
                Some(report) => {
                    tracing::info!(bundle = %bundle_id, aggregator = %request.to, bytes = report.report_bytes, "logs gathered for a peer's problem");
                    self.log_bundles.insert(bundle_id.clone(), report);
                    self.log_bundles_order.push_back(bundle_id.clone());
                    while self.log_bundles_order.len() > LOG_BUNDLES_LEN_MAX {
                        if let Some(oldest) = self.log_bundles_order.pop_front() {
                            self.log_bundles.remove(&oldest);
                        }
                    }
                    Some(bundle_id)
                }
            }
        };
        self.actor
            .do_send(WorkDone::LogsGathered { request, bundle });
        Ok(())
    }

    fn uploader(&mut self) -> Result<Option<&mut crate::uploader::Uploader>> {
        if self.uploader.is_none() {
            let built = crate::uploader::Uploader::new(
                &self.settings.upload,
                self.store.clone(),
                &self.settings.data_dir,
            )?;
            self.uploader = Some(built);
        }
        Ok(self.uploader.as_mut().and_then(Option::as_mut))
    }

    /// The endpoint has this node's incident: mark its problem and fire `uploaded`.
    fn mark_uploaded(&self, report_id: &ReportId) -> Result<()> {
        let Some(incident) = self.store.incident(&report_id.0)? else {
            return Ok(());
        };
        let Some(detail) = self.store.problem(&incident.problem_id)? else {
            return Ok(());
        };
        self.store.set_upload_state(
            &incident.problem_id,
            crashmesh_store::UploadState::Uploaded {
                at_ms: crashmesh_capture::clock::now_ms(),
            },
        )?;
        tracing::info!(report = %report_id, problem = %incident.problem_id, "incident at the endpoint");
        let context = crashmesh_gather::events::EventContext {
            kind: crashmesh_gather::events::EventKind::Uploaded,
            problem_id: incident.problem_id.clone(),
            report_id: report_id.0.clone(),
            count: detail.summary.count,
            node: self.node.clone(),
            problem: detail.problem,
        };
        crashmesh_gather::events::fire(
            &self.settings.events,
            context,
            self.store.clone(),
            &self.settings.data_dir.join("scratch"),
        );
        Ok(())
    }
}

/// A report or log bundle as the node pages it to the aggregator.
fn report_found(report: &crate::report::NodeReport) -> ReportRead {
    ReportRead::Found {
        report_bytes: report.report_bytes,
        chunk_ids: report
            .chunk_ids
            .iter()
            .map(crate::report::to_wire)
            .collect(),
    }
}

/// Admits connections of configured members and reads each.
async fn accept_loop(transport: Arc<MeshTransport>, members: Vec<NodeId>, actor: Addr<MeshActor>) {
    while let Some((peer_name, connection)) = transport.accept().await {
        let peer = peer_name.node_id();
        if !members.contains(&peer) {
            tracing::warn!(
                peer = %peer_name, remote = %connection.remote_address(),
                "refusing a connection: a certificate of our CA, but not a configured member"
            );
            connection.close("not a configured member");
            continue;
        }
        tracing::debug!(peer = %peer_name, remote = %connection.remote_address(), "member connected");
        actor.do_send(PeerConnected { peer: peer.clone() });
        tokio::spawn(read_connection(peer, connection, actor.clone().recipient()));
    }
}

/// Hands every message of one connection to the actor until the connection is gone.
async fn read_connection(peer: NodeId, connection: Connection, inbound: Recipient<Inbound>) {
    loop {
        match connection.accept_message().await {
            Ok(bytes) => {
                if inbound
                    .send(Inbound {
                        peer: peer.clone(),
                        bytes,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) if error.is_connection_lost() => {
                tracing::debug!(%peer, %error, "mesh connection closed");
                return;
            }
            // One bad stream (the transport logged it); the connection carries on.
            Err(_) => {}
        }
    }
}

/// Keeps one connection to `peer` and sends what the actor queues (see the module docs).
async fn peer_link(
    transport: Arc<MeshTransport>,
    peer: NodeId,
    address: SocketAddr,
    mut queue: mpsc::Receiver<LinkCommand>,
    inbound: Recipient<Inbound>,
    link_up: Recipient<LinkUp>,
) {
    let mut connection: Option<(Connection, Instant)> = None;
    let mut backoff_ms = RECONNECT_BACKOFF_MIN_MS;
    let mut failures = RateLimitedLog::default();
    while let Some(command) = queue.recv().await {
        let bytes = match command {
            LinkCommand::Send(bytes) => bytes,
            LinkCommand::PeerReconnected => {
                if let Some((old, since)) = &connection
                    && since.elapsed() >= Duration::from_millis(FRESH_CONNECTION_MS)
                {
                    tracing::debug!(%peer, "the peer connected afresh; reconnecting to it");
                    old.close("the peer reconnected");
                    connection = None;
                }
                continue;
            }
        };
        if connection.is_none() {
            match transport.connect(address, peer.as_str()).await {
                Ok(connected) => {
                    tracing::info!(%peer, %address, "connected to member");
                    backoff_ms = RECONNECT_BACKOFF_MIN_MS;
                    link_up.do_send(LinkUp { peer: peer.clone() });
                    tokio::spawn(read_connection(
                        peer.clone(),
                        connected.clone(),
                        inbound.clone(),
                    ));
                    connection = Some((connected, Instant::now()));
                }
                Err(error) => {
                    if let Some(suppressed) = failures.admit() {
                        tracing::warn!(%peer, %address, %error, suppressed, "cannot connect to member");
                    }
                    // What queued while the peer was unreachable is stale: drop it.
                    while let Ok(LinkCommand::Send(_) | LinkCommand::PeerReconnected) =
                        queue.try_recv()
                    {}
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
                    continue;
                }
            }
        }
        let (open, _) = connection.as_ref().expect("connected above");
        let stall = Duration::from_millis(SEND_STALL_MS);
        match tokio::time::timeout(stall, open.send_message_parts(bytes.into_parts())).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.is_connection_lost() => {
                tracing::debug!(%peer, %error, "connection to member lost");
                connection = None;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "a datagram to a member failed"),
            Err(_) => {
                tracing::info!(%peer, stalled_ms = SEND_STALL_MS, "a send to a member stalled; reconnecting");
                open.close("send stalled");
                connection = None;
            }
        }
    }
}
