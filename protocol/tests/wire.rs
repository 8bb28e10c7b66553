//! Wire format: round trips of every message, and hostile input refused with typed errors.

use crashmesh_protocol::ProblemKind;
use crashmesh_protocol::wire::{
    Announcement, CHUNK_BYTES_MAX, CHUNK_IDS_PER_MESSAGE_MAX, ChunkId, ClusterId, DecodeError,
    EncodeError, Envelope, FEEDBACK_TEXT_BYTES_MAX, Feedback, LABELS_LEN_MAX, Label,
    MESSAGE_BYTES_MAX, Message, NodeId, ReportId, UploadState, WIRE_VERSION, decode, decode_shared,
    encode, encode_parts,
};

fn announcement() -> Announcement {
    Announcement {
        report_id: ReportId::new("node-1-1700000000000-1"),
        signature: "v1:0123456789abcdef0123456789abcdef01234567".to_string(),
        kind: ProblemKind::Core,
        time_ms: 1_700_000_000_000,
        node: NodeId::new("node-1"),
        report_bytes: 123_456,
        labels: vec![Label {
            key: "role".into(),
            value: "storage".into(),
        }],
        upload_state: UploadState::NotUploaded,
    }
}

fn every_message() -> Vec<Message> {
    let report_id = ReportId::new("r-1");
    let chunk = ChunkId::of(b"chunk");
    vec![
        Message::Membership {
            packet: vec![1, 2, 3],
        },
        Message::RequestVote {
            term: 7,
            candidate: NodeId::new("node-1"),
        },
        Message::Vote {
            term: 7,
            granted: true,
        },
        Message::Heartbeat {
            term: 7,
            aggregator: NodeId::new("node-1"),
            sent_ms: 99,
        },
        Message::HeartbeatAck {
            term: 7,
            echo_sent_ms: 99,
        },
        Message::Announce {
            term: 7,
            announcement: announcement(),
        },
        Message::AnnounceAck {
            term: 7,
            report_id: report_id.clone(),
            uploaded: true,
        },
        Message::FetchReport {
            term: 7,
            report_id: report_id.clone(),
        },
        Message::ReportChunks {
            report_id: report_id.clone(),
            report_bytes: 5,
            chunk_count: 3,
            offset: 2,
            chunk_ids: vec![chunk],
        },
        Message::ReportUnavailable {
            report_id: report_id.clone(),
        },
        Message::ChunkWant {
            report_id: report_id.clone(),
            chunk_ids: vec![chunk, chunk],
        },
        Message::ChunkData {
            report_id: report_id.clone(),
            chunk_id: chunk,
            bytes: b"chunk".as_slice().into(),
        },
        Message::LogRequest {
            term: 7,
            signature: "v1:abc".into(),
            kind: ProblemKind::Core,
            window_start_ms: 1,
            window_end_ms: 2,
        },
        Message::LogReady {
            term: 7,
            signature: "v1:abc".into(),
            bundle: Some(ReportId::new("logs:node-1:v1:abc")),
        },
        Message::LogReady {
            term: 7,
            signature: "v1:abc".into(),
            bundle: None,
        },
        Message::ProblemFeedback {
            term: 7,
            signature: "v1:abc".into(),
            feedback: Feedback {
                problem_id: "p-1".into(),
                known: true,
                bug: Some((12, "open".into(), "http://endpoint/bugs/12".into())),
                workaround: Some("restart the daemon".into()),
            },
        },
    ]
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        cluster_id: ClusterId::new("cluster-a"),
        from: NodeId::new("node-1"),
        message,
    }
}

#[test]
fn every_message_round_trips() {
    for message in every_message() {
        let original = envelope(message);
        let bytes = encode(&original).expect("encodes");
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(decode(&bytes, MESSAGE_BYTES_MAX), Ok(original));
    }
}

#[test]
fn empty_oversize_unknown_version_and_trailing_bytes_are_refused() {
    let bytes = encode(&envelope(Message::Vote {
        term: 1,
        granted: false,
    }))
    .unwrap();
    assert_eq!(decode(&[], MESSAGE_BYTES_MAX), Err(DecodeError::Empty));
    assert_eq!(
        decode(&bytes, bytes.len() - 1),
        Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit_bytes: bytes.len() - 1
        })
    );
    let mut other_version = bytes.clone();
    other_version[0] = WIRE_VERSION + 1;
    assert_eq!(
        decode(&other_version, MESSAGE_BYTES_MAX),
        Err(DecodeError::UnknownVersion {
            found: WIRE_VERSION + 1
        })
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        decode(&trailing, MESSAGE_BYTES_MAX),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn every_truncation_and_byte_flip_is_refused_or_valid_never_a_panic() {
    for message in every_message() {
        let bytes = encode(&envelope(message)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_both(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for position in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut mutated = bytes.clone();
                mutated[position] ^= flip;
                if let Ok(decoded) = decode_both(&mutated) {
                    decoded.validate().expect("whatever decodes is valid");
                }
            }
        }
    }
}

#[test]
fn a_huge_length_prefix_does_not_allocate_beyond_the_input() {
    // A Membership packet claiming 2^62 bytes: postcard must fail on the short input.
    let mut bytes = vec![WIRE_VERSION];
    bytes.extend(postcard::to_allocvec(&ClusterId::new("c")).unwrap());
    bytes.extend(postcard::to_allocvec(&NodeId::new("n")).unwrap());
    bytes.push(0); // Message::Membership
    bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
    assert!(matches!(
        decode(&bytes, MESSAGE_BYTES_MAX),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn fields_over_their_limits_are_refused_both_ways() {
    let mut too_many_labels = announcement();
    too_many_labels.labels = (0..=LABELS_LEN_MAX)
        .map(|i| Label {
            key: format!("k{i}"),
            value: "v".into(),
        })
        .collect();
    let mut bad_node = announcement();
    bad_node.node = NodeId("no spaces allowed".into());
    let cases = vec![
        Message::Announce {
            term: 1,
            announcement: too_many_labels,
        },
        Message::Announce {
            term: 1,
            announcement: bad_node,
        },
        Message::ChunkWant {
            report_id: ReportId::new("r"),
            chunk_ids: vec![ChunkId([0; 32]); CHUNK_IDS_PER_MESSAGE_MAX + 1],
        },
        Message::ChunkData {
            report_id: ReportId::new("r"),
            chunk_id: ChunkId([0; 32]),
            bytes: vec![0; CHUNK_BYTES_MAX + 1].into(),
        },
        Message::Membership { packet: vec![] },
        Message::ReportChunks {
            report_id: ReportId::new("r"),
            report_bytes: 1,
            chunk_count: 1,
            offset: 1,
            chunk_ids: vec![ChunkId([0; 32])],
        },
        Message::RequestVote {
            term: 1,
            candidate: NodeId::new("someone-else"),
        },
        Message::Heartbeat {
            term: 1,
            aggregator: NodeId::new("someone-else"),
            sent_ms: 0,
        },
        Message::AnnounceAck {
            term: 1,
            report_id: ReportId::new(""),
            uploaded: false,
        },
        Message::LogRequest {
            term: 1,
            signature: "s".into(),
            kind: ProblemKind::Core,
            window_start_ms: 2,
            window_end_ms: 1,
        },
        Message::LogReady {
            term: 1,
            signature: "s".into(),
            bundle: Some(ReportId::new("")),
        },
        Message::ProblemFeedback {
            term: 1,
            signature: "s".into(),
            feedback: Feedback {
                problem_id: "p".into(),
                known: false,
                bug: None,
                workaround: Some("x".repeat(FEEDBACK_TEXT_BYTES_MAX + 1)),
            },
        },
    ];
    for message in cases {
        let envelope = envelope(message);
        assert!(
            matches!(encode(&envelope), Err(EncodeError::InvalidField { .. })),
            "{envelope:?} must not encode"
        );
        // Encoded by hand, as a hostile peer would, the receiver refuses it.
        let mut bytes = vec![WIRE_VERSION];
        bytes.extend(postcard::to_allocvec(&envelope).unwrap());
        assert!(
            matches!(
                decode(&bytes, 4 * MESSAGE_BYTES_MAX),
                Err(DecodeError::InvalidField { .. })
            ),
            "{envelope:?} must not decode"
        );
    }
}

#[test]
fn node_names_are_plain_and_never_start_with_a_dot() {
    assert!(NodeId("node-1.rack_2".into()).is_valid());
    for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
        assert!(!NodeId(bad.to_string()).is_valid(), "{bad:?}");
    }
}

#[test]
fn random_garbage_is_refused_without_panic() {
    let mut rng = crashmesh_protocol::rng::DeterministicRng::new(1);
    for _ in 0..20_000 {
        let length = rng.range_u64(0, 200) as usize;
        let mut bytes: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
        if !bytes.is_empty() {
            bytes[0] = WIRE_VERSION;
        }
        if let Ok(decoded) = decode_both(&bytes) {
            decoded.validate().expect("whatever decodes is valid");
        }
    }
}

/// `decode`, after checking that `decode_shared` gives the same answer.
fn decode_both(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let decoded = decode(bytes, MESSAGE_BYTES_MAX);
    let frame = bytes::Bytes::copy_from_slice(bytes);
    assert_eq!(decode_shared(&frame, MESSAGE_BYTES_MAX), decoded);
    decoded
}

/// The one difference of the shared paths: a chunk's bytes are neither copied into the
/// encoding nor out of the received frame. Fails when `CHUNK_DATA_VARIANT` no longer
/// names `ChunkData`'s place in `Message` (the chunk would be copied).
#[test]
fn a_chunk_decoded_shared_stays_in_its_frame() {
    for message in every_message() {
        let envelope = envelope(message);
        let parts = encode_parts(&envelope).unwrap();
        assert_eq!(parts.to_vec(), encode(&envelope).unwrap(), "{envelope:?}");
        let frame = bytes::Bytes::from(parts.to_vec());
        let decoded = decode_shared(&frame, MESSAGE_BYTES_MAX).unwrap();
        assert_eq!(decoded, envelope);
        let [_, payload, _] = parts.into_parts();
        match (&envelope.message, &decoded.message) {
            (Message::ChunkData { bytes: sent, .. }, Message::ChunkData { bytes: read, .. }) => {
                assert_eq!(
                    payload.as_ptr(),
                    sent.as_ptr(),
                    "the chunk is not copied to send"
                );
                let inside = frame.as_ptr_range();
                assert!(
                    inside.contains(&read.as_ptr()) && read.len() == sent.len(),
                    "the chunk is read in place"
                );
            }
            _ => assert!(payload.is_empty(), "only a chunk travels apart"),
        }
    }
}

/// `ChunkData`'s and `Membership`'s bytes are coded as byte strings (`serde_bytes`); a
/// node of an older build coded them as serde's `Vec<u8>`. In postcard both are a length
/// and the raw bytes, so the two builds read each other's messages.
#[test]
fn byte_fields_keep_the_layout_of_a_plain_vec() {
    #[derive(serde::Serialize)]
    struct PlainChunkData {
        report_id: ReportId,
        chunk_id: ChunkId,
        bytes: Vec<u8>,
    }
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let plain = PlainChunkData {
        report_id: ReportId::new("r-1"),
        chunk_id: ChunkId::of(&bytes),
        bytes: bytes.clone(),
    };
    let encoded = encode(&envelope(Message::ChunkData {
        report_id: plain.report_id.clone(),
        chunk_id: plain.chunk_id,
        bytes: bytes.into(),
    }))
    .unwrap();
    assert!(encoded.ends_with(&postcard::to_allocvec(&plain).unwrap()));

    let packet: Vec<u8> = (0..200u8).collect();
    let encoded = encode(&envelope(Message::Membership {
        packet: packet.clone(),
    }))
    .unwrap();
    assert!(encoded.ends_with(&postcard::to_allocvec(&(packet,)).unwrap()));
}
