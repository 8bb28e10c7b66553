//! The driver alone, with a shell that makes votes durable later (as the daemon's redb
//! commit on another thread does): what follows a persist waits for it, inputs meanwhile
//! queue behind it, and answers given later are paged like answers given at once.

use crashmesh_protocol::cluster::NodeConfig;
use crashmesh_protocol::consolidation::{
    ChunksRequest, LogsRequest, ReportRead, ReportRequest, UploadIncidents, UploadReport,
};
use crashmesh_protocol::driver::{
    Answer, Driver, DriverError, Notice, PersistToken, Persisting, Released, Shell,
};
use crashmesh_protocol::election::PersistedVote;
use crashmesh_protocol::wire::{
    CHUNK_IDS_PER_MESSAGE_MAX, ChunkId, ClusterId, Encoded, Envelope, MESSAGE_BYTES_MAX, Message,
    NodeId, ReportId, decode, encode,
};

/// Everything the driver asked, in order, answering every request later.
#[derive(Default)]
struct LaterShell {
    persists: Vec<(PersistToken, PersistedVote)>,
    sent: Vec<(NodeId, Message)>,
    report_reads: Vec<ReportRequest>,
}

impl Shell for LaterShell {
    fn stopped(&self) -> bool {
        false
    }

    fn persist(&mut self, token: PersistToken, vote: &PersistedVote) -> Persisting {
        self.persists.push((token, vote.clone()));
        Persisting::Pending
    }

    fn transmit(&mut self, to: NodeId, bytes: Encoded) {
        let envelope = decode(&bytes.to_vec(), MESSAGE_BYTES_MAX).expect("the node encodes");
        self.sent.push((to, envelope.message));
    }

    fn read_report(&mut self, request: ReportRequest) -> Answer<ReportRead> {
        self.report_reads.push(request);
        Answer::Later
    }

    fn read_chunks(&mut self, request: ChunksRequest) -> Answer<Vec<(ChunkId, bytes::Bytes)>> {
        panic!("no chunk was wanted: {request:?}")
    }

    fn gather_logs(&mut self, request: LogsRequest) -> Answer<Option<ReportId>> {
        panic!("no log was asked for: {request:?}")
    }

    fn chunks_offered(&mut self, report_id: ReportId, _: Vec<ChunkId>) -> Answer<Vec<ChunkId>> {
        panic!("{report_id} is not fetched by this node")
    }

    fn store_chunk(&mut self, report_id: ReportId, _: ChunkId, _: bytes::Bytes) {
        panic!("{report_id} is not fetched by this node")
    }

    fn upload_report(&mut self, upload: UploadReport) {
        panic!("this node uploads nothing: {upload:?}")
    }

    fn upload_incidents(&mut self, upload: UploadIncidents) {
        panic!("this node uploads nothing: {upload:?}")
    }

    fn uploaded(&mut self, report_id: ReportId) {
        panic!("{report_id} was never announced")
    }

    fn notice(&mut self, notice: Notice) {
        if let Notice::AnswerRefused(error) = notice {
            panic!("an answer was refused: {error}");
        }
    }
}

fn ids() -> Vec<NodeId> {
    ["a", "b", "c"].into_iter().map(NodeId::new).collect()
}

fn driver_of_a() -> Driver {
    let config = NodeConfig::new(ids()[0].clone(), ClusterId::new("c"), ids(), 1);
    Driver::new(config, PersistedVote::default(), 7, 0).unwrap()
}

fn datagram(from: &NodeId, message: Message) -> bytes::Bytes {
    let envelope = Envelope {
        cluster_id: ClusterId::new("c"),
        from: from.clone(),
        message,
    };
    encode(&envelope).unwrap().into()
}

fn vote_requests(sent: &[(NodeId, Message)]) -> usize {
    sent.iter()
        .filter(|(_, message)| matches!(message, Message::RequestVote { .. }))
        .count()
}

#[test]
fn a_candidacy_waits_for_its_vote_to_be_durable_and_a_wrong_token_is_refused() {
    let mut driver = driver_of_a();
    let mut shell = LaterShell::default();
    let [_, b, _] = ids().try_into().unwrap();
    // Past the election timeout the node asks b and c first (pre-vote, nothing durable);
    // b says yes, a majority with a's own: a stands in term 1.
    let timeout_ms = driver.node().election().next_deadline_ms();
    driver.node_mut().handle_timeout(timeout_ms);
    assert_eq!(driver.release(timeout_ms, &mut shell), Released::Idle);
    let reply = Message::PreVoteReply {
        for_term: 1,
        term: 0,
        granted: true,
    };
    let now_ms = timeout_ms + 5;
    driver
        .node_mut()
        .handle_datagram(now_ms, &b, &datagram(&b, reply))
        .unwrap();
    let released = driver.release(now_ms, &mut shell);
    let [(token, vote)] = shell.persists.clone().try_into().unwrap();
    assert_eq!(released, Released::Blocked(token));
    assert_eq!(
        vote,
        PersistedVote {
            term: 1,
            voted_for: Some(ids()[0].clone())
        }
    );
    assert_eq!(
        vote_requests(&shell.sent),
        0,
        "a candidacy before its vote is on disk"
    );
    // Inputs are taken meanwhile; what they produce waits behind the persist too.
    let fetch = Message::FetchReport {
        term: 1,
        report_id: ReportId::new("r1"),
    };
    driver
        .node_mut()
        .handle_datagram(now_ms, &b, &datagram(&b, fetch))
        .unwrap();
    assert_eq!(driver.release(now_ms, &mut shell), Released::Blocked(token));
    assert!(shell.report_reads.is_empty());
    assert_eq!(driver.durable_vote(), &PersistedVote::default());
    // The token resumes the release once; a second time it names nothing waited for.
    let unknown = driver
        .persisted(token)
        .and_then(|()| driver.persisted(token));
    assert_eq!(
        unknown,
        Err(DriverError::UnknownPersist {
            token,
            waiting: None
        })
    );
    assert_eq!(driver.durable_vote(), &vote);
    assert_eq!(driver.release(now_ms, &mut shell), Released::Idle);
    assert_eq!(vote_requests(&shell.sent), 2);
    assert_eq!(
        shell.report_reads,
        vec![ReportRequest {
            to: b.clone(),
            report_id: ReportId::new("r1"),
        }]
    );
    // Answered later, the list goes in pages like one answered at once.
    let count = CHUNK_IDS_PER_MESSAGE_MAX + 1;
    let chunk_ids: Vec<ChunkId> = (0..count as u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let request = shell.report_reads.remove(0);
    let read = ReportRead::Found {
        report_bytes: 9,
        chunk_ids,
    };
    driver
        .node_mut()
        .report_read(now_ms, request, read)
        .unwrap();
    shell.sent.clear();
    assert_eq!(driver.release(now_ms, &mut shell), Released::Idle);
    let pages: Vec<(u32, usize)> = shell
        .sent
        .iter()
        .filter_map(|(to, message)| match message {
            Message::ReportChunks {
                offset, chunk_ids, ..
            } if to == &b => Some((*offset, chunk_ids.len())),
            _ => None,
        })
        .collect();
    assert_eq!(pages, vec![(0, CHUNK_IDS_PER_MESSAGE_MAX), (1024, 1)]);
}
