//! Consolidation alone: hostile chunks, limits, idempotency, fencing, paging.

use crashmesh_protocol::ProblemKind;
use crashmesh_protocol::consolidation::{
    Consolidation, ConsolidationConfig, ConsolidationError, ConsolidationOutput, ConsolidationRole,
    UploadOutcome,
};
use crashmesh_protocol::wire::{
    Announcement, ChunkId, ClusterId, Message, NodeId, ReportId, UploadState,
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
