//! The messages nodes send each other over the mesh, and their encoding.
//!
//! A datagram is one version byte ([`WIRE_VERSION`]) followed by a postcard-encoded
//! [`Envelope`]. [`decode`] and [`decode_shared`] (the same checks, the same results) are
//! the only ways in for peer bytes.
//!
//! Invariants:
//! - No I/O, no clock, no threads, no randomness: encoding and decoding are pure.
//! - Decoded peer input is size-limited twice: the whole datagram against the caller's
//!   `message_bytes_max` before postcard sees it (so no count read from the input can
//!   make us allocate more than the input's length), then every string, list and blob
//!   against the named limits below ([`Envelope::validate`]).
//! - Versioned: an unknown version byte is refused with a typed error, never guessed at.
//! - A chunk's bytes are not copied on the hot path: [`encode_parts`] leaves them out of
//!   the encoding and [`decode_shared`] slices them out of the received frame.
//! - Every error is typed ([`DecodeError`]); decoding never panics on any input (the fuzz
//!   target `fuzz/fuzz_targets/wire.rs` holds it to that).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::ProblemKind;

/// The version byte every datagram starts with; bumped on any incompatible change.
pub const WIRE_VERSION: u8 = 1;
/// The default largest datagram a node accepts (one chunk of evidence plus headroom).
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// The longest node name (`crashmesh cluster issue NODE`).
pub const NODE_ID_BYTES_MAX: usize = 64;
/// The longest cluster id.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;
/// The longest report id a node makes (the upload format's `INCIDENT_ID_BYTES_MAX`).
pub const REPORT_ID_BYTES_MAX: usize = 256;
/// The longest signature (`v1:` and 40 hex digits today; room for later schemes).
pub const SIGNATURE_BYTES_MAX: usize = 128;
/// How many labels (`role`, `test_run`, …) one announcement carries at most.
pub const LABELS_LEN_MAX: usize = 16;
/// The longest label key or value.
pub const LABEL_BYTES_MAX: usize = 128;
/// The largest SWIM packet (foca's `max_packet_size`).
pub const MEMBERSHIP_PACKET_BYTES_MAX: usize = 1400;
/// How many chunk ids one `ReportChunks` or `ChunkWant` names at most.
pub const CHUNK_IDS_PER_MESSAGE_MAX: usize = 1024;
/// How many chunks one report has at most (the upload format's `CHUNKS_PER_REPORT_MAX`).
pub const CHUNKS_PER_REPORT_MAX: usize = 65_536;
/// The largest chunk of evidence in one `ChunkData` (the store's 512 KiB chunk plus the
/// room zstd may add to an incompressible one).
pub const CHUNK_BYTES_MAX: usize = 512 * 1024 + 64 * 1024;
/// The longest text in endpoint feedback (a problem id, a bug's status or URL, a
/// workaround note).
pub const FEEDBACK_TEXT_BYTES_MAX: usize = 4096;

/// A term of the aggregator election; it only grows.
pub type Term = u64;

/// A node's name, as its certificate states it: 1 to 64 bytes of `[A-Za-z0-9._-]`, not
/// starting with a dot (safe in file names and URLs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    /// A node id from a name; panics on a name [`NodeId::is_valid`] refuses (for config
    /// and tests: peer input goes through [`decode`]).
    pub fn new(name: impl Into<String>) -> NodeId {
        let node = NodeId(name.into());
        assert!(node.is_valid(), "invalid node name {:?}", node.0);
        node
    }

    /// True when the name is 1..=64 bytes of `[A-Za-z0-9._-]` not starting with a dot.
    pub fn is_valid(&self) -> bool {
        is_plain_name(&self.0, NODE_ID_BYTES_MAX)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The cluster's id, made by `crashmesh cluster init`: 1 to 64 bytes of `[A-Za-z0-9._-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(pub String);

impl ClusterId {
    /// A cluster id from a name; panics on an invalid one (config and tests only).
    pub fn new(name: impl Into<String>) -> ClusterId {
        let cluster = ClusterId(name.into());
        assert!(
            is_plain_name(&cluster.0, CLUSTER_ID_BYTES_MAX),
            "invalid cluster id"
        );
        cluster
    }
}

/// A report id, made by the node that captured the problem; unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReportId(pub String);

impl ReportId {
    /// A report id from a string.
    pub fn new(id: impl Into<String>) -> ReportId {
        ReportId(id.into())
    }

    /// Checks it against the wire's limits (1 to [`REPORT_ID_BYTES_MAX`] bytes).
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_report_id(self)
    }
}

impl std::fmt::Display for ReportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A chunk of evidence's content address: blake3 of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of these bytes.
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }
}

/// One `key = value` label from a node's config (`role = "storage"`, `test_run = "42"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// Whether the endpoint has accepted an incident, as the announcing node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UploadState {
    /// Not yet known to be at the endpoint.
    NotUploaded,
    /// An aggregator told this node the endpoint acknowledged it.
    Uploaded,
}

/// What a node tells the aggregator about one incident: enough to deduplicate it by
/// signature and to pull its full report later. Idempotent by `report_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The node's report id of this incident.
    pub report_id: ReportId,
    /// The problem's signature (`v1:…`).
    pub signature: String,
    /// The problem's kind.
    pub kind: ProblemKind,
    /// When the problem happened (unix ms, the origin node's clock).
    pub time_ms: u64,
    /// The node that captured it and holds its evidence.
    pub node: NodeId,
    /// The size of the full report (metadata and evidence) in bytes.
    pub report_bytes: u64,
    /// The node's labels from config.
    pub labels: Vec<Label>,
    /// Whether the endpoint already has it (so a new aggregator can rebuild its state).
    pub upload_state: UploadState,
}

/// A mesh message. Membership, election and consolidation share one envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A SWIM packet, produced and consumed by foca (membership.rs).
    Membership {
        /// foca's own postcard encoding, at most [`MEMBERSHIP_PACKET_BYTES_MAX`].
        /// (`serde_bytes`: see `ChunkData::bytes`.)
        #[serde(with = "serde_bytes")]
        packet: Vec<u8>,
    },
    /// A candidate asks for a vote in `term`.
    RequestVote {
        /// The candidate's term.
        term: Term,
        /// The candidate (the sender).
        candidate: NodeId,
    },
    /// The answer to `RequestVote`.
    Vote {
        /// The voter's term after handling the request.
        term: Term,
        /// True when the vote goes to the candidate.
        granted: bool,
    },
    /// The aggregator holds its role.
    Heartbeat {
        /// The aggregator's term.
        term: Term,
        /// The aggregator (the sender).
        aggregator: NodeId,
        /// The aggregator's own clock at sending, echoed back in the ack for its lease.
        sent_ms: u64,
    },
    /// The answer to `Heartbeat`.
    HeartbeatAck {
        /// The follower's term (higher than the heartbeat's: the aggregator is stale).
        term: Term,
        /// The heartbeat's `sent_ms`.
        echo_sent_ms: u64,
    },
    /// A node tells the aggregator about an incident.
    Announce {
        /// The term of the aggregator the node addresses.
        term: Term,
        /// The incident.
        announcement: Announcement,
    },
    /// The aggregator has recorded an announcement (and maybe uploaded it).
    AnnounceAck {
        /// The aggregator's term.
        term: Term,
        /// Which announcement.
        report_id: ReportId,
        /// True once the endpoint has acknowledged the incident.
        uploaded: bool,
    },
    /// The aggregator asks the origin for a report's list of chunks.
    FetchReport {
        /// The aggregator's term.
        term: Term,
        /// Which report.
        report_id: ReportId,
    },
    /// The origin lists the chunks of a report ("have"), a page at a time.
    ReportChunks {
        /// Which report.
        report_id: ReportId,
        /// The report's whole size in bytes.
        report_bytes: u64,
        /// How many chunks the report has over all pages.
        chunk_count: u32,
        /// The index of this page's first chunk.
        offset: u32,
        /// This page's chunks, in order.
        chunk_ids: Vec<ChunkId>,
    },
    /// The origin no longer has a report (evicted); the aggregator fetches another.
    ReportUnavailable {
        /// Which report.
        report_id: ReportId,
    },
    /// The aggregator asks for the chunks it lacks ("want").
    ChunkWant {
        /// Which report.
        report_id: ReportId,
        /// The chunks wanted.
        chunk_ids: Vec<ChunkId>,
    },
    /// One chunk's bytes.
    ChunkData {
        /// Which report.
        report_id: ReportId,
        /// The chunk's id: blake3 of `bytes`, checked by the receiver.
        chunk_id: ChunkId,
        /// The bytes, at most [`CHUNK_BYTES_MAX`]. Coded as one byte string (`Bytes` and
        /// `serde_bytes` both are), not element by element as serde codes a `Vec<u8>`: the
        /// same bytes on the wire in postcard (a length, then the bytes), at memcpy speed
        /// instead of a call per byte (measured: encode and decode were 25% of a log
        /// transfer's CPU, which ran at 0.6 GiB/s). Shared, not owned: [`encode_parts`]
        /// sends them without copying them into the encoding, and [`decode_shared`] leaves
        /// them in the received frame.
        bytes: Bytes,
    },
    /// The aggregator asks a peer for its logs around a problem.
    LogRequest {
        /// The aggregator's term.
        term: Term,
        /// The problem.
        signature: String,
        /// The problem's kind (the peer's gathering rules are chosen by it).
        kind: ProblemKind,
        /// Window start (unix ms).
        window_start_ms: u64,
        /// Window end (unix ms).
        window_end_ms: u64,
    },
    /// A peer's answer to `LogRequest`: the id of the log bundle it gathered (fetched
    /// like a report: `FetchReport`, then have/want by chunk), or none when it has no logs
    /// of the window.
    LogReady {
        /// The term of the request.
        term: Term,
        /// The problem.
        signature: String,
        /// The bundle, if any.
        bundle: Option<ReportId>,
    },
    /// The aggregator tells the nodes of a problem what the endpoint answered.
    ProblemFeedback {
        /// The aggregator's term.
        term: Term,
        /// The problem.
        signature: String,
        /// The endpoint's answer.
        feedback: Feedback,
    },
    /// Would the receiver vote for the sender in `term`? Asked before standing, changes
    /// nothing on either side (Raft's pre-vote), so a node that cannot win (a minority
    /// partition) does not raise its term and disrupt the majority when it comes back.
    PreVote {
        /// The term the sender would stand in (its own plus one).
        term: Term,
        /// The would-be candidate (the sender).
        candidate: NodeId,
    },
    /// The answer to `PreVote`.
    PreVoteReply {
        /// The `term` of the `PreVote` answered.
        for_term: Term,
        /// The answerer's own term.
        term: Term,
        /// True when the answerer would vote for the sender.
        granted: bool,
    },
}

/// What the endpoint knows about a problem, as every node of the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The endpoint's problem id.
    pub problem_id: String,
    /// True when the endpoint knew the problem before this cluster reported it.
    pub known: bool,
    /// The bug: number, status and URL.
    pub bug: Option<(u64, String, String)>,
    /// What to do meanwhile, when someone wrote it down.
    pub workaround: Option<String>,
}

impl Feedback {
    /// Checks every text against [`FEEDBACK_TEXT_BYTES_MAX`].
    pub fn validate(&self) -> Result<(), DecodeError> {
        let texts = [
            Some(self.problem_id.as_str()),
            self.bug.as_ref().map(|(_, status, _)| status.as_str()),
            self.bug.as_ref().map(|(_, _, url)| url.as_str()),
            self.workaround.as_deref(),
        ];
        if texts
            .iter()
            .flatten()
            .any(|text| text.len() > FEEDBACK_TEXT_BYTES_MAX)
        {
            return Err(invalid("feedback", "a text over FEEDBACK_TEXT_BYTES_MAX"));
        }
        Ok(())
    }
}

/// What crosses the wire: who sends, in which cluster, and the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The cluster; a datagram of another cluster is refused by the shell.
    pub cluster_id: ClusterId,
    /// The sender; the shell checks it against the peer's certificate.
    pub from: NodeId,
    /// The message.
    pub message: Message,
}

/// Why peer bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing arrived.
    #[error("empty datagram")]
    Empty,
    /// More bytes than the receiver accepts.
    #[error("datagram of {bytes} bytes is over the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The datagram's size.
        bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// A version this build does not speak.
    #[error("unknown wire version {found} (this build speaks {WIRE_VERSION})")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// Not a well-formed envelope.
    #[error("malformed datagram: {0}")]
    Malformed(postcard::Error),
    /// Bytes left after the envelope.
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    /// Well-formed, but a field breaks a limit or a rule.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field breaks a limit: the peer would refuse it.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// postcard failed (should not happen for valid messages).
    #[error("encoding failed: {0}")]
    Postcard(postcard::Error),
}

/// Encodes an envelope: the version byte, then postcard. Refuses what a peer would refuse.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    validate_for_encoding(envelope)?;
    // Written once, after the version byte, into a buffer sized for a chunk's message.
    let mut bytes =
        Vec::with_capacity(1 + ENVELOPE_OVERHEAD_BYTES + envelope.message.payload_len());
    bytes.push(WIRE_VERSION);
    postcard::serialize_with_flavor(envelope, ExtendVec(&mut bytes))
        .map_err(EncodeError::Postcard)?;
    Ok(bytes)
}

/// [`Envelope::validate`], its refusal as an encoding error.
fn validate_for_encoding(envelope: &Envelope) -> Result<(), EncodeError> {
    envelope.validate().map_err(|error| match error {
        DecodeError::InvalidField { field, reason } => EncodeError::InvalidField { field, reason },
        _ => EncodeError::InvalidField {
            field: "envelope",
            reason: "invalid",
        },
    })
}

/// A postcard output that appends to a borrowed `Vec`, a slice at a time
/// (`postcard::to_extend` appends byte by byte: a chunk's encoding took 4% of a log
/// transfer's CPU that way). The endpoint's row encoder uses it too, on a reused buffer.
pub struct ExtendVec<'a>(pub &'a mut Vec<u8>);

impl<'a> postcard::ser_flavors::Flavor for ExtendVec<'a> {
    type Output = &'a [u8];

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<&'a [u8]> {
        Ok(self.0.as_slice())
    }
}

/// An encoded envelope as the parts it is sent in, in order: the encoding before a
/// chunk's bytes, the chunk's bytes (shared with the message, not copied), and the
/// encoding after them. Messages without a chunk are all `head`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    head: Bytes,
    payload: Bytes,
    tail: Bytes,
}

impl Encoded {
    /// The encoding's length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len() + self.tail.len()
    }

    /// True when there is nothing (never for an encoded envelope).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts, in order, to write one after another.
    pub fn into_parts(self) -> [Bytes; 3] {
        [self.head, self.payload, self.tail]
    }

    /// The encoding in one buffer (a copy when it has a chunk).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len());
        for part in [&self.head, &self.payload, &self.tail] {
            bytes.extend_from_slice(part);
        }
        bytes
    }
}

/// Encodes an envelope as [`encode`] does, but leaves a `ChunkData`'s bytes where they
/// are: the parts are the same bytes as `encode`'s, without copying the chunk (measured:
/// that copy, into memory fresh to the process, was 11% of a log transfer's CPU).
pub fn encode_parts(envelope: &Envelope) -> Result<Encoded, EncodeError> {
    validate_for_encoding(envelope)?;
    let payload = match &envelope.message {
        Message::ChunkData { bytes, .. } => bytes.clone(),
        _ => Bytes::new(),
    };
    let mut head = Vec::with_capacity(1 + ENVELOPE_OVERHEAD_BYTES);
    head.push(WIRE_VERSION);
    let (encoding, split_at) = postcard::serialize_with_flavor(
        envelope,
        SkipPayload {
            out: head,
            payload: &payload,
            split_at: None,
        },
    )
    .map_err(EncodeError::Postcard)?;
    let mut head = Bytes::from(encoding);
    match split_at {
        Some(at) => {
            let tail = head.split_off(at);
            Ok(Encoded {
                head,
                payload,
                tail,
            })
        }
        // An empty chunk was written like any field.
        None => Ok(Encoded {
            head,
            ..Encoded::default()
        }),
    }
}

/// A postcard output that writes like [`ExtendVec`] but skips the one slice that is the
/// payload (postcard hands a byte string's bytes over as the slice serde was given, after
/// its length), remembering where it belongs.
struct SkipPayload<'a> {
    out: Vec<u8>,
    payload: &'a Bytes,
    split_at: Option<usize>,
}

impl postcard::ser_flavors::Flavor for SkipPayload<'_> {
    type Output = (Vec<u8>, Option<usize>);

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.split_at.is_none()
            && !data.is_empty()
            && data.as_ptr() == self.payload.as_ptr()
            && data.len() == self.payload.len()
        {
            self.split_at = Some(self.out.len());
        } else {
            self.out.extend_from_slice(data);
        }
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.out.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<(Vec<u8>, Option<usize>)> {
        Ok((self.out, self.split_at))
    }
}

/// Decodes peer bytes: refuses more than `message_bytes_max`, unknown versions, garbage,
/// trailing bytes and fields over their limits. Never panics.
pub fn decode(bytes: &[u8], message_bytes_max: usize) -> Result<Envelope, DecodeError> {
    let body = check_datagram(bytes, message_bytes_max)?;
    let (envelope, rest): (Envelope, &[u8]) =
        postcard::take_from_bytes(body).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    envelope.validate()?;
    Ok(envelope)
}

/// Decodes a received datagram as [`decode`] does (the same envelope, the same errors),
/// but a `ChunkData`'s bytes stay in `frame`, shared rather than copied out.
pub fn decode_shared(frame: &Bytes, message_bytes_max: usize) -> Result<Envelope, DecodeError> {
    if let Ok(body) = check_datagram(frame, message_bytes_max)
        && let Some(envelope) = decode_chunk_data(frame, body)
    {
        return Ok(envelope);
    }
    decode(frame, message_bytes_max)
}

/// The place of `Message::ChunkData` in its enum: postcard codes an enum's variant as
/// that index (a varint). The test `a_chunk_decoded_shared_stays_in_its_frame` fails
/// when the enum's order changes and this does not.
const CHUNK_DATA_VARIANT: u32 = 11;

/// A `ChunkData` envelope, read in place: `None` when the datagram is anything else or
/// is not valid (then [`decode`] says why).
fn decode_chunk_data(frame: &Bytes, body: &[u8]) -> Option<Envelope> {
    /// An envelope's fields up to its message's variant, as postcard lays them out.
    #[derive(Deserialize)]
    struct Head {
        cluster_id: ClusterId,
        from: NodeId,
        variant: u32,
    }
    /// `Message::ChunkData`'s fields, its bytes borrowed from the datagram.
    #[derive(Deserialize)]
    struct ChunkDataRef<'a> {
        report_id: ReportId,
        chunk_id: ChunkId,
        #[serde(borrow)]
        bytes: &'a [u8],
    }
    let (head, rest): (Head, &[u8]) = postcard::take_from_bytes(body).ok()?;
    if head.variant != CHUNK_DATA_VARIANT {
        return None;
    }
    let (chunk, rest): (ChunkDataRef<'_>, &[u8]) = postcard::take_from_bytes(rest).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let envelope = Envelope {
        cluster_id: head.cluster_id,
        from: head.from,
        message: Message::ChunkData {
            report_id: chunk.report_id,
            chunk_id: chunk.chunk_id,
            bytes: frame.slice_ref(chunk.bytes),
        },
    };
    envelope.validate().ok()?;
    Some(envelope)
}

/// The datagram's envelope bytes, after the checks of its size and version byte.
fn check_datagram(bytes: &[u8], message_bytes_max: usize) -> Result<&[u8], DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > message_bytes_max {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit_bytes: message_bytes_max,
        });
    }
    if bytes[0] != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion { found: bytes[0] });
    }
    Ok(&bytes[1..])
}

fn is_plain_name(name: &str, bytes_max: usize) -> bool {
    !name.is_empty()
        && name.len() <= bytes_max
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

fn invalid(field: &'static str, reason: &'static str) -> DecodeError {
    DecodeError::InvalidField { field, reason }
}

fn check_report_id(report_id: &ReportId) -> Result<(), DecodeError> {
    if report_id.0.is_empty() || report_id.0.len() > REPORT_ID_BYTES_MAX {
        return Err(invalid("report_id", "empty or over REPORT_ID_BYTES_MAX"));
    }
    Ok(())
}

fn check_signature(signature: &str) -> Result<(), DecodeError> {
    if signature.is_empty() || signature.len() > SIGNATURE_BYTES_MAX {
        return Err(invalid("signature", "empty or over SIGNATURE_BYTES_MAX"));
    }
    Ok(())
}

fn check_chunk_ids(chunk_ids: &[ChunkId]) -> Result<(), DecodeError> {
    if chunk_ids.len() > CHUNK_IDS_PER_MESSAGE_MAX {
        return Err(invalid("chunk_ids", "over CHUNK_IDS_PER_MESSAGE_MAX"));
    }
    Ok(())
}

fn check_node(node: &NodeId, field: &'static str) -> Result<(), DecodeError> {
    if !node.is_valid() {
        return Err(invalid(field, "not 1..=64 bytes of [A-Za-z0-9._-]"));
    }
    Ok(())
}

impl Announcement {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_report_id(&self.report_id)?;
        check_signature(&self.signature)?;
        check_node(&self.node, "announcement.node")?;
        if self.labels.len() > LABELS_LEN_MAX {
            return Err(invalid("labels", "over LABELS_LEN_MAX"));
        }
        for label in &self.labels {
            if label.key.is_empty()
                || label.key.len() > LABEL_BYTES_MAX
                || label.value.len() > LABEL_BYTES_MAX
            {
                return Err(invalid(
                    "labels",
                    "key empty or key/value over LABEL_BYTES_MAX",
                ));
            }
        }
        Ok(())
    }
}

/// What an envelope's encoding holds besides its message's bulk bytes, about (ids, names,
/// the tag): a first guess of the encoding's size, so a chunk's message is written into
/// one buffer without regrowing.
const ENVELOPE_OVERHEAD_BYTES: usize = 256;

impl Message {
    /// The bulk bytes this message carries (a chunk's, a membership packet's).
    fn payload_len(&self) -> usize {
        match self {
            Message::ChunkData { bytes, .. } => bytes.len(),
            Message::Membership { packet } => packet.len(),
            _ => 0,
        }
    }
}

impl Envelope {
    /// Checks every field against its limit; [`decode`] and [`encode`] both call it.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if !is_plain_name(&self.cluster_id.0, CLUSTER_ID_BYTES_MAX) {
            return Err(invalid("cluster_id", "not 1..=64 bytes of [A-Za-z0-9._-]"));
        }
        check_node(&self.from, "from")?;
        match &self.message {
            Message::Membership { packet } => {
                if packet.is_empty() || packet.len() > MEMBERSHIP_PACKET_BYTES_MAX {
                    return Err(invalid(
                        "packet",
                        "empty or over MEMBERSHIP_PACKET_BYTES_MAX",
                    ));
                }
            }
            Message::RequestVote { candidate, .. } | Message::PreVote { candidate, .. } => {
                check_node(candidate, "candidate")?;
                if candidate != &self.from {
                    return Err(invalid("candidate", "is not the sender"));
                }
            }
            Message::Heartbeat { aggregator, .. } => {
                check_node(aggregator, "aggregator")?;
                if aggregator != &self.from {
                    return Err(invalid("aggregator", "is not the sender"));
                }
            }
            Message::Vote { .. } | Message::HeartbeatAck { .. } | Message::PreVoteReply { .. } => {}
            Message::Announce { announcement, .. } => announcement.validate()?,
            Message::AnnounceAck { report_id, .. }
            | Message::FetchReport { report_id, .. }
            | Message::ReportUnavailable { report_id } => check_report_id(report_id)?,
            Message::ReportChunks {
                report_id,
                chunk_ids,
                chunk_count,
                offset,
                ..
            } => {
                check_report_id(report_id)?;
                check_chunk_ids(chunk_ids)?;
                let page_end = u64::from(*offset) + chunk_ids.len() as u64;
                if *chunk_count as usize > CHUNKS_PER_REPORT_MAX
                    || page_end > u64::from(*chunk_count)
                {
                    return Err(invalid(
                        "chunk_count",
                        "over CHUNKS_PER_REPORT_MAX or short of the page",
                    ));
                }
            }
            Message::ChunkWant {
                report_id,
                chunk_ids,
            } => {
                check_report_id(report_id)?;
                check_chunk_ids(chunk_ids)?;
            }
            Message::ChunkData {
                report_id, bytes, ..
            } => {
                check_report_id(report_id)?;
                if bytes.len() > CHUNK_BYTES_MAX {
                    return Err(invalid("bytes", "over CHUNK_BYTES_MAX"));
                }
            }
            Message::LogRequest {
                signature,
                window_start_ms,
                window_end_ms,
                ..
            } => {
                check_signature(signature)?;
                if window_start_ms > window_end_ms {
                    return Err(invalid("window_start_ms", "after window_end_ms"));
                }
            }
            Message::LogReady {
                signature, bundle, ..
            } => {
                check_signature(signature)?;
                if let Some(bundle) = bundle {
                    check_report_id(bundle)?;
                }
            }
            Message::ProblemFeedback {
                signature,
                feedback,
                ..
            } => {
                check_signature(signature)?;
                feedback.validate()?;
            }
        }
        Ok(())
    }
}
