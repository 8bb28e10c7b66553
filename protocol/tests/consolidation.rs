//! Consolidation alone: hostile chunks, limits, idempotency, fencing, paging.

use crashmesh_protocol::ProblemKind;
use crashmesh_protocol::consolidation::{
    ChunksRequest, Consolidation, ConsolidationConfig, ConsolidationError, ConsolidationOutput,
    ConsolidationRole, LogsRequest, ReportRead, ReportRequest, UploadOutcome,
};
use crashmesh_protocol::wire::{
    Announcement, CHUNK_BYTES_MAX, CHUNK_IDS_PER_MESSAGE_MAX, CHUNKS_PER_REPORT_MAX, ChunkId,
    ClusterId, Message, NodeId, ReportId, UploadState,
};

fn announcement(node: &str, report: &str, signature: &str) -> Announcement {
    Announcement {
        report_id: ReportId::new(report),
        signature: signature.into(),
        kind: ProblemKind::Python,
        time_ms: 1_000,
        node: NodeId::new(node),
        report_bytes: 10,
        labels: vec![],
        upload_state: UploadState::NotUploaded,
    }
}

fn outputs(consolidation: &mut Consolidation) -> Vec<ConsolidationOutput> {
    std::iter::from_fn(|| consolidation.poll_output()).collect()
}

/// An aggregator (`agg`) past its quiet period that has been announced `report` by `origin`.
fn aggregator_with(report: &str, origin: &str) -> Consolidation {
    let mut aggregator = Consolidation::new(
        NodeId::new("agg"),
        ConsolidationConfig::new(ClusterId::new("c")),
    );
    aggregator.set_role(0, ConsolidationRole::Aggregator { term: 3 });
    let message = Message::Announce {
        term: 3,
        announcement: announcement(origin, report, "v1:s"),
    };
    aggregator.handle_message(10, &NodeId::new(origin), &message);
    aggregator
}

#[test]
fn announcements_are_idempotent_and_acknowledged_once_recorded() {
    let mut aggregator = aggregator_with("r1", "n1");
    let first = outputs(&mut aggregator);
    assert_eq!(
        first,
        vec![ConsolidationOutput::Send {
            to: NodeId::new("n1"),
            message: Message::AnnounceAck {
                term: 3,
                report_id: ReportId::new("r1"),
                uploaded: false
            },
        }]
    );
    let again = Message::Announce {
        term: 3,
        announcement: announcement("n1", "r1", "v1:s"),
    };
    aggregator.handle_message(20, &NodeId::new("n1"), &again);
    assert_eq!(outputs(&mut aggregator), first);
    assert_eq!(aggregator.problems()[0].pending_count, 1);
    // Someone announcing another node's incident is ignored.
    let forged = Message::Announce {
        term: 3,
        announcement: announcement("n1", "r2", "v1:s"),
    };
    aggregator.handle_message(20, &NodeId::new("n2"), &forged);
    assert!(outputs(&mut aggregator).is_empty());
}

#[test]
fn a_chunk_that_does_not_hash_to_its_id_is_refused_and_the_fetch_completes_with_the_real_one() {
    let mut aggregator = aggregator_with("r1", "n1");
    aggregator.handle_timeout(1_000); // past takeover_quiet_ms: the fetch starts
    let fetch = outputs(&mut aggregator);
    assert!(fetch.iter().any(|output| matches!(
        output,
        ConsolidationOutput::Send {
            message: Message::FetchReport { term: 3, .. },
            ..
        }
    )));
    let good = b"the real chunk".to_vec();
    let chunk_id = ChunkId::of(&good);
    let listing = Message::ReportChunks {
        report_id: ReportId::new("r1"),
        report_bytes: 14,
        chunk_count: 1,
        offset: 0,
        chunk_ids: vec![chunk_id],
    };
    aggregator.handle_message(1_010, &NodeId::new("n1"), &listing);
    assert_eq!(
        outputs(&mut aggregator),
        vec![ConsolidationOutput::ChunksOffered {
            report_id: ReportId::new("r1"),
            chunk_ids: vec![chunk_id]
        }]
    );
    aggregator.chunks_missing(1_020, &ReportId::new("r1"), vec![chunk_id]);
    assert!(outputs(&mut aggregator).iter().any(|output| matches!(
        output,
        ConsolidationOutput::Send {
            message: Message::ChunkWant { .. },
            ..
        }
    )));
    let forged = Message::ChunkData {
        report_id: ReportId::new("r1"),
        chunk_id,
        bytes: b"forged".as_slice().into(),
    };
    aggregator.handle_message(1_030, &NodeId::new("n1"), &forged);
    assert!(outputs(&mut aggregator).is_empty());
    assert_eq!(aggregator.counters().chunks_rejected, 1);
    let real = Message::ChunkData {
        report_id: ReportId::new("r1"),
        chunk_id,
        bytes: good.clone().into(),
    };
    aggregator.handle_message(1_040, &NodeId::new("n1"), &real);
    let stored = outputs(&mut aggregator);
    assert!(matches!(&stored[0], ConsolidationOutput::StoreChunk { bytes, .. } if *bytes == good));
    let ConsolidationOutput::UploadReport(upload) = &stored[1] else {
        panic!("{stored:?}")
    };
    assert_eq!(upload.fence.term, 3);
    assert_eq!(upload.first.report_id, ReportId::new("r1"));

    // The endpoint says a newer aggregator exists: no more uploads in this term.
    aggregator.upload_finished(1_100, upload.upload_id, UploadOutcome::StaleTerm);
    assert_eq!(
        outputs(&mut aggregator),
        vec![ConsolidationOutput::Fenced { term: 3 }]
    );
    aggregator.handle_timeout(100_000);
    assert!(outputs(&mut aggregator).is_empty());
}

#[test]
fn a_chunk_list_arrives_in_pages_and_an_out_of_order_page_is_not_taken() {
    let mut aggregator = aggregator_with("r1", "n1");
    aggregator.handle_timeout(1_000);
    outputs(&mut aggregator);
    let ids: Vec<ChunkId> = (0..3u8).map(|i| ChunkId::of(&[i])).collect();
    let page = |offset: u32, chunk_ids: Vec<ChunkId>| Message::ReportChunks {
        report_id: ReportId::new("r1"),
        report_bytes: 3,
        chunk_count: 3,
        offset,
        chunk_ids,
    };
    aggregator.handle_message(1_010, &NodeId::new("n1"), &page(2, vec![ids[2]]));
    assert!(outputs(&mut aggregator).is_empty());
    aggregator.handle_message(1_010, &NodeId::new("n1"), &page(0, ids[..2].to_vec()));
    assert!(outputs(&mut aggregator).is_empty());
    aggregator.handle_message(1_010, &NodeId::new("n1"), &page(2, vec![ids[2]]));
    assert_eq!(
        outputs(&mut aggregator),
        vec![ConsolidationOutput::ChunksOffered {
            report_id: ReportId::new("r1"),
            chunk_ids: ids
        }]
    );
}

/// The origin's side of a fetch: the shell reads, the protocol pages what it read.
fn origin_serving(message: Message) -> (Consolidation, Vec<ConsolidationOutput>) {
    let mut origin = Consolidation::new(
        NodeId::new("n1"),
        ConsolidationConfig::new(ClusterId::new("c")),
    );
    origin.handle_message(10, &NodeId::new("agg"), &message);
    let asked = outputs(&mut origin);
    (origin, asked)
}

/// The messages among `outputs`, each checked to go to the aggregator.
fn messages_to_agg(outputs: Vec<ConsolidationOutput>) -> Vec<Message> {
    outputs
        .into_iter()
        .map(|output| match output {
            ConsolidationOutput::Send { to, message } if to == NodeId::new("agg") => message,
            other => panic!("not a message to the aggregator: {other:?}"),
        })
        .collect()
}

#[test]
fn the_origin_pages_a_chunk_list_its_shell_read_and_the_aggregator_takes_it_whole() {
    let fetch = Message::FetchReport {
        term: 3,
        report_id: ReportId::new("r1"),
    };
    let (mut origin, asked) = origin_serving(fetch);
    let request = ReportRequest {
        to: NodeId::new("agg"),
        report_id: ReportId::new("r1"),
    };
    assert_eq!(
        asked,
        vec![ConsolidationOutput::ReadReport(request.clone())]
    );
    let count = 2 * CHUNK_IDS_PER_MESSAGE_MAX + 5;
    let ids: Vec<ChunkId> = (0..count as u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let found = ReportRead::Found {
        report_bytes: 77,
        chunk_ids: ids.clone(),
    };
    origin.report_read(request.clone(), found).unwrap();
    let pages = messages_to_agg(outputs(&mut origin));
    let offsets: Vec<(u32, usize)> = pages
        .iter()
        .map(|page| match page {
            Message::ReportChunks {
                chunk_count: 2_053,
                report_bytes: 77,
                offset,
                chunk_ids,
                ..
            } => (*offset, chunk_ids.len()),
            other => panic!("not a page of the list: {other:?}"),
        })
        .collect();
    assert_eq!(offsets, vec![(0, 1024), (1024, 1024), (2048, 5)]);
    let mut aggregator = aggregator_with("r1", "n1");
    aggregator.handle_timeout(1_000);
    outputs(&mut aggregator);
    for page in &pages {
        aggregator.handle_message(1_010, &NodeId::new("n1"), page);
    }
    assert_eq!(
        outputs(&mut aggregator),
        vec![ConsolidationOutput::ChunksOffered {
            report_id: ReportId::new("r1"),
            chunk_ids: ids
        }]
    );
    // An empty report is one empty page; a missing one is unavailable; one longer than a
    // report may be is unavailable too, and the shell is told why.
    let empty = ReportRead::Found {
        report_bytes: 0,
        chunk_ids: vec![],
    };
    origin.report_read(request.clone(), empty).unwrap();
    origin
        .report_read(request.clone(), ReportRead::Unavailable)
        .unwrap();
    let too_long = ReportRead::Found {
        report_bytes: 1,
        chunk_ids: vec![ChunkId::of(b"x"); CHUNKS_PER_REPORT_MAX + 1],
    };
    assert!(matches!(
        origin.report_read(request, too_long),
        Err(ConsolidationError::InvalidAnswer(_))
    ));
    let unavailable = Message::ReportUnavailable {
        report_id: ReportId::new("r1"),
    };
    assert_eq!(
        messages_to_agg(outputs(&mut origin)),
        vec![
            Message::ReportChunks {
                report_id: ReportId::new("r1"),
                report_bytes: 0,
                chunk_count: 0,
                offset: 0,
                chunk_ids: vec![],
            },
            unavailable.clone(),
            unavailable,
        ]
    );
}

#[test]
fn the_origin_sends_each_chunk_read_as_its_own_message_and_refuses_an_oversized_one() {
    let chunks: Vec<bytes::Bytes> = ["one", "two", "three"]
        .iter()
        .map(|text| bytes::Bytes::from(text.as_bytes().to_vec()))
        .collect();
    let ids: Vec<ChunkId> = chunks.iter().map(|chunk| ChunkId::of(chunk)).collect();
    let want = Message::ChunkWant {
        report_id: ReportId::new("r1"),
        chunk_ids: ids.clone(),
    };
    let (mut origin, asked) = origin_serving(want);
    assert_eq!(
        asked,
        vec![ConsolidationOutput::ReadChunks(ChunksRequest {
            to: NodeId::new("agg"),
            report_id: ReportId::new("r1"),
            chunk_ids: ids.clone(),
        })]
    );
    let (agg, r1) = (NodeId::new("agg"), ReportId::new("r1"));
    // Answered in two batches, as a shell short of memory does; the third chunk is
    // over the limit of a message.
    let oversized = bytes::Bytes::from(vec![0; CHUNK_BYTES_MAX + 1]);
    let first = vec![(ids[0], chunks[0].clone())];
    origin.chunks_read(&agg, &r1, first).unwrap();
    let second = vec![(ids[1], chunks[1].clone()), (ids[2], oversized)];
    assert!(matches!(
        origin.chunks_read(&agg, &r1, second),
        Err(ConsolidationError::InvalidAnswer(_))
    ));
    let sent = messages_to_agg(outputs(&mut origin));
    assert_eq!(sent.len(), 2);
    for (message, chunk) in sent.iter().zip(&chunks) {
        let Message::ChunkData {
            bytes, chunk_id, ..
        } = message
        else {
            panic!("not chunk data: {message:?}");
        };
        assert_eq!(*chunk_id, ChunkId::of(chunk));
        // The bytes the shell read, shared rather than copied.
        assert_eq!(bytes.as_ptr(), chunk.as_ptr());
    }
}

#[test]
fn the_origin_answers_a_log_request_with_the_bundle_its_shell_gathered() {
    let asking = Message::LogRequest {
        term: 3,
        signature: "v1:s".into(),
        kind: ProblemKind::Python,
        window_start_ms: 100,
        window_end_ms: 200,
    };
    let (mut origin, asked) = origin_serving(asking);
    let request = LogsRequest {
        to: NodeId::new("agg"),
        term: 3,
        signature: "v1:s".into(),
        kind: ProblemKind::Python,
        window_start_ms: 100,
        window_end_ms: 200,
    };
    assert_eq!(
        asked,
        vec![ConsolidationOutput::GatherLogs(request.clone())]
    );
    let ready = |bundle: Option<&str>| Message::LogReady {
        term: 3,
        signature: "v1:s".into(),
        bundle: bundle.map(ReportId::new),
    };
    let bundle = Some(ReportId::new("logs.n1.1"));
    origin.logs_gathered(request.clone(), bundle).unwrap();
    origin.logs_gathered(request.clone(), None).unwrap();
    let unnamed = Some(ReportId::new(""));
    assert!(matches!(
        origin.logs_gathered(request, unnamed),
        Err(ConsolidationError::InvalidAnswer(_))
    ));
    assert_eq!(
        messages_to_agg(outputs(&mut origin)),
        vec![ready(Some("logs.n1.1")), ready(None), ready(None)]
    );
}

#[test]
fn an_unreachable_origin_is_given_up_for_another_incident_of_the_same_problem() {
    let mut aggregator = aggregator_with("r1", "n1");
    let second = Message::Announce {
        term: 3,
        announcement: Announcement {
            time_ms: 2_000,
            ..announcement("n2", "r2", "v1:s")
        },
    };
    aggregator.handle_message(10, &NodeId::new("n2"), &second);
    outputs(&mut aggregator);
    let mut fetched_from = Vec::new();
    let mut now_ms = 1_000;
    while now_ms < 20_000 {
        aggregator.handle_timeout(now_ms);
        for output in outputs(&mut aggregator) {
            if let ConsolidationOutput::Send {
                to,
                message: Message::FetchReport { .. },
            } = output
            {
                fetched_from.push(to);
            }
        }
        now_ms = aggregator.next_deadline_ms().unwrap();
    }
    assert_eq!(fetched_from[..5], vec![NodeId::new("n1"); 5]);
    assert_eq!(fetched_from[5], NodeId::new("n2"));
    // Then n2 for five attempts, then both again: a failed origin is retried later.
    assert_eq!(fetched_from[6..10], vec![NodeId::new("n2"); 4]);
    assert_eq!(fetched_from[10], NodeId::new("n1"));
    assert!(aggregator.counters().fetches_failed >= 2);
}

#[test]
fn a_full_node_queue_refuses_with_a_typed_error_and_retries_back_off() {
    let mut config = ConsolidationConfig::new(ClusterId::new("c"));
    config.pending_records_len_max = 2;
    let mut node = Consolidation::new(NodeId::new("n1"), config);
    node.announce(0, announcement("n1", "r1", "v1:s")).unwrap();
    node.announce(0, announcement("n1", "r2", "v1:s")).unwrap();
    node.announce(0, announcement("n1", "r1", "v1:s")).unwrap(); // idempotent
    assert_eq!(
        node.announce(0, announcement("n1", "r3", "v1:s")),
        Err(ConsolidationError::QueueFull { len_max: 2 })
    );
    assert!(matches!(
        node.announce(0, announcement("n2", "r4", "v1:s")),
        Err(ConsolidationError::NotThisNode(_))
    ));
    // No aggregator yet: nothing is sent, nothing is due.
    assert!(outputs(&mut node).is_empty());
    assert_eq!(node.next_deadline_ms(), None);
    node.set_role(
        100,
        ConsolidationRole::Follower {
            term: 1,
            aggregator: Some(NodeId::new("agg")),
        },
    );
    let mut sent_at_ms = Vec::new();
    let mut now_ms = 100;
    while now_ms < 40_000 {
        node.handle_timeout(now_ms);
        for output in outputs(&mut node) {
            if let ConsolidationOutput::Send {
                message: Message::Announce { announcement, .. },
                ..
            } = output
                && announcement.report_id == ReportId::new("r1")
            {
                sent_at_ms.push(now_ms);
            }
        }
        now_ms = node.next_deadline_ms().unwrap();
    }
    let gaps: Vec<u64> = sent_at_ms
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .collect();
    assert_eq!(gaps[..5], [500, 1_000, 2_000, 4_000, 8_000]);
    assert!(gaps[5..].iter().all(|gap| *gap == 8_000), "{gaps:?}");
    // An acknowledgement from the aggregator stops the retries until the re-announce.
    node.handle_message(
        now_ms,
        &NodeId::new("agg"),
        &Message::AnnounceAck {
            term: 1,
            report_id: ReportId::new("r1"),
            uploaded: true,
        },
    );
    assert!(outputs(&mut node).contains(&ConsolidationOutput::Uploaded {
        report_id: ReportId::new("r1")
    }));
    assert_eq!(node.pending_len(), 1);
    node.announce(now_ms, announcement("n1", "r3", "v1:s"))
        .unwrap();
}

/// Announcements lost while the aggregator was unreachable back off; when the shell
/// connects to the aggregator again they go at once, and reaching another node changes
/// nothing.
#[test]
fn an_aggregator_reachable_again_gets_the_waiting_announcements_at_once() {
    let mut node = Consolidation::new(
        NodeId::new("n1"),
        ConsolidationConfig::new(ClusterId::new("c")),
    );
    node.set_role(
        0,
        ConsolidationRole::Follower {
            term: 3,
            aggregator: Some(NodeId::new("agg")),
        },
    );
    node.announce(0, announcement("n1", "r1", "v1:s")).unwrap();
    let announced = |outputs: Vec<ConsolidationOutput>| {
        outputs
            .iter()
            .filter(|output| {
                matches!(output, ConsolidationOutput::Send { to, message: Message::Announce { .. } } if to.as_str() == "agg")
            })
            .count()
    };
    assert_eq!(announced(outputs(&mut node)), 1);
    // Lost, again and again: the retries back off to seconds apart.
    let mut now_ms = 0;
    for _ in 0..5 {
        now_ms = node.next_deadline_ms().unwrap();
        node.handle_timeout(now_ms);
        assert_eq!(announced(outputs(&mut node)), 1);
    }
    let waiting_until_ms = node.next_deadline_ms().unwrap();
    assert!(
        waiting_until_ms >= now_ms + 4_000,
        "{waiting_until_ms} {now_ms}"
    );

    node.peer_reachable(now_ms + 10, &NodeId::new("n2"));
    assert_eq!(
        announced(outputs(&mut node)),
        0,
        "another node changes nothing"
    );
    node.peer_reachable(now_ms + 10, &NodeId::new("agg"));
    assert_eq!(announced(outputs(&mut node)), 1, "sent at once");
    assert!(node.next_deadline_ms().unwrap() < now_ms + 10 + 1_000);
}
