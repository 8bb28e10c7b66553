//! The shell around a node, as the daemon's mesh actor is: the shared
//! [`Driver`](crashmesh_protocol::driver::Driver) releases the node's outputs (persist
//! before release, in order) through [`SimShell`]: votes into the store, datagrams to the
//! network, reports read from the store, uploads to the endpoint. And the workload's
//! problems recorded and announced.

#[allow(unused_imports)]
use super::lifecycle::{encode_vote, sim_problem};
use super::*;
use crashmesh_protocol::consolidation::{
    ChunksRequest, LogsRequest, ReportRead, ReportRequest, UploadIncidents, UploadReport,
};
use crashmesh_protocol::driver::{Answer, Notice, PersistToken, Persisting, Shell};
use crashmesh_protocol::wire::Encoded;

impl Sim {
    // ---- the shell ------------------------------------------------------------------

    /// Releases a node's outputs through the shared driver, with [`SimShell`] as its
    /// shell; a store error on the way kills the process (and what the node had not
    /// released dies with it).
    pub(super) fn drain(&mut self, index: usize) {
        let Some(mut driver) = self.nodes[index].driver.take() else {
            return;
        };
        let now_local = self.local_ms(index);
        let mut shell = SimShell {
            sim: self,
            index,
            store_failed: false,
        };
        driver.release(now_local, &mut shell);
        let store_failed = shell.store_failed;
        self.nodes[index].driver = Some(driver);
        if store_failed {
            self.crash_and_restart(index);
            return;
        }
        self.after_activity(index);
    }

    pub(super) fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.datagrams += 1;
        self.datagram_bytes += bytes.len() as u64;
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(&(from as u32).to_le_bytes());
        self.trace.update(&(to as u32).to_le_bytes());
        self.trace.update(&bytes);
        match self.network.fate(&mut self.rng, from, to) {
            Fate::Blocked => {}
            Fate::Lost => self.faults.add(FaultKind::PacketLoss, 1),
            Fate::Delivered(delays) => {
                if delays.len() > 1 {
                    self.faults.add(FaultKind::Duplication, 1);
                }
                if self.plan.has(FaultKind::Reordering) && !self.healed {
                    self.faults.add(FaultKind::Reordering, 1);
                }
                if self.plan.has(FaultKind::Latency) && !self.healed {
                    self.faults.add(FaultKind::Latency, 1);
                }
                for delay_ms in delays {
                    let event = Event::Deliver {
                        from,
                        to,
                        bytes: bytes.clone(),
                    };
                    self.schedule(self.now_ms + delay_ms.max(1), event);
                }
            }
        }
    }

    /// Reads a report's protocol chunks back from the node's store (or a log bundle it
    /// gathered for the aggregator).
    pub(super) fn report_pieces(&self, index: usize, report_id: &ReportId) -> Option<Vec<Vec<u8>>> {
        if let Some(bundle) = self.nodes[index].log_bundles.get(report_id) {
            return Some(
                workload::report_pieces(bundle)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect(),
            );
        }
        let store = self.nodes[index].store.as_ref()?;
        let incident = store.incident(&report_id.0).ok()??;
        let evidence = incident
            .attachments
            .iter()
            .find(|evidence| evidence.name == "report")?;
        let bytes = store.read_blob_bytes(&evidence.blob).ok()?;
        Some(
            workload::report_pieces(&bytes)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect(),
        )
    }

    pub(super) fn call_endpoint(&mut self, index: usize, upload_id: u64, call: UploadCall) {
        // A full report is big (100 MB on average in the reference deployment): its body
        // takes a while to stream; incident updates are small.
        let latency_ms = if call.full_report.is_some() {
            self.rng.range_u64(200, FULL_REPORT_TRANSFER_MS_MAX)
        } else {
            self.rng.range_u64(10, 1_000)
        };
        let process = self.nodes[index].process;
        self.note(format!(
            "node-{index} uploads {} term {} ({} incidents{})",
            call.signature,
            call.term,
            call.incidents.len(),
            if call.full_report.is_some() {
                ", full report"
            } else {
                ""
            }
        ));
        self.schedule(
            self.now_ms + latency_ms,
            Event::EndpointCall {
                node: index,
                process,
                upload_id,
                call,
            },
        );
    }

    /// Checks what must hold after a node did something, and keeps its timer scheduled.
    pub(super) fn after_activity(&mut self, index: usize) {
        let Some(node) = self.nodes[index].node() else {
            return;
        };
        let role = node.election().role();
        let term = node.election().term();
        let pending = node.consolidation().pending_len();
        let deadline_local_ms = node.next_deadline_ms();
        if role == Role::Aggregator {
            let holder = *self.aggregator_by_term.entry(term).or_insert(index);
            if holder != index {
                let detail = format!("node-{holder} and node-{index} both lead term {term}");
                self.violate(Invariant::TwoAggregatorsInOneTerm, detail);
            }
            if let Some((since_ms, lost_term)) = self.leaderless_since
                && term > lost_term
            {
                self.election_ms.push(self.now_ms - since_ms);
                self.leaderless_since = None;
            }
        }
        let pending_max =
            crashmesh_protocol::consolidation::ConsolidationConfig::new(ClusterId::new(CLUSTER_ID))
                .pending_records_len_max;
        if pending > pending_max {
            let detail = format!("node-{index} holds {pending} pending incidents");
            self.violate(Invariant::QuotaExceeded, detail);
        }
        if role != self.nodes[index].role {
            self.note(format!("node-{index} is {role:?} in term {term}"));
            self.nodes[index].role = role;
        }
        let due_ms = self.nodes[index]
            .clock
            .true_ms_at(deadline_local_ms)
            .max(self.now_ms);
        if self.nodes[index].timer_at_ms != Some(due_ms) && !self.nodes[index].paused {
            self.nodes[index].timer_at_ms = Some(due_ms);
            let process = self.nodes[index].process;
            self.schedule(
                due_ms,
                Event::Timer {
                    node: index,
                    process,
                },
            );
        }
    }

    // ---- workload -------------------------------------------------------------------

    /// A problem on a node: its report goes into the store (durably), then the incident is
    /// recorded; once that returns Ok the incident is acknowledged and announced.
    pub(super) fn arrive(&mut self, index: usize, signature: String) {
        if self.nodes[index].driver.is_none() {
            // Nothing runs on a dead node to crash.
            return;
        }
        self.nodes[index].serial += 1;
        let report_id = ReportId::new(format!(
            "node-{index}-p{}-{}",
            self.nodes[index].process, self.nodes[index].serial
        ));
        let bytes = workload::report_bytes(&mut self.rng, &signature, &report_id.0);
        let local_ms = self.local_ms(index);
        let incident = NewIncident {
            report_id: report_id.0.clone(),
            time_ms: local_ms,
            node: self.nodes[index].id.as_str().to_string(),
            problem: sim_problem(&signature),
            executable: Some("/usr/bin/storaged".into()),
            pid: Some(1_000 + self.nodes[index].serial as u32),
            uid: Some(0),
            signal: Some(11),
            core: None,
            core_truncated: false,
            attachments: Vec::new(),
            labels: BTreeMap::new(),
        };
        let store = self.nodes[index].store.as_ref().expect("a running node");
        let recorded = store.put_blob_bytes(&bytes).and_then(|blob| {
            let mut incident = incident;
            incident.attachments.push(("report".to_string(), blob));
            store.record_incident(incident)
        });
        if let Err(error) = recorded {
            self.incidents_refused += 1;
            self.note(format!(
                "node-{index} could not record {report_id}: {error}"
            ));
            self.crash_and_restart(index);
            return;
        }
        self.acknowledged.insert(
            report_id.clone(),
            Acknowledged {
                at_ms: self.now_ms,
                uploaded: false,
            },
        );
        self.report_chunks.insert(
            report_id.clone(),
            workload::report_pieces(&bytes)
                .into_iter()
                .map(ChunkId::of)
                .collect(),
        );
        self.note(format!("node-{index} caught {signature} as {report_id}"));
        let store = self.nodes[index].store.as_ref().expect("a running node");
        match store.enforce_quota(self.now_ms) {
            Ok(report) => {
                if !report.still_over_quota && report.used_bytes_after > report.allowed_bytes {
                    let detail = format!(
                        "node-{index} uses {} of {} bytes",
                        report.used_bytes_after, report.allowed_bytes
                    );
                    self.violate(Invariant::QuotaExceeded, detail);
                }
            }
            Err(error) => {
                self.note(format!("node-{index} quota pass failed: {error}"));
                self.crash_and_restart(index);
                return;
            }
        }
        let announcement = Announcement {
            report_id,
            signature,
            kind: ProblemKind::Core,
            time_ms: local_ms,
            node: self.nodes[index].id.clone(),
            report_bytes: bytes.len() as u64,
            labels: vec![Label {
                key: "role".into(),
                value: "storage".into(),
            }],
            upload_state: UploadState::NotUploaded,
        };
        if let Some(node) = self.nodes[index].node_mut()
            && let Err(error) = node.announce(local_ms, announcement)
        {
            tracing::debug!(%error, "announcement refused");
        }
        self.drain(index);
    }
}

/// One node's shell, as the daemon's mesh actor is for a real node: votes into the store
/// (`put_setting`), datagrams to the [`Network`], reports read from the store, uploads to
/// the [`SimEndpoint`](crate::endpoint::SimEndpoint). Every read is answered at once.
pub(super) struct SimShell<'a> {
    sim: &'a mut Sim,
    index: usize,
    /// A store write failed: the process restarts (the store's documented safe reaction),
    /// so the driver stops releasing.
    store_failed: bool,
}

impl Shell for SimShell<'_> {
    fn stopped(&self) -> bool {
        self.store_failed
    }

    /// Makes term and vote durable; a store error kills the process before anything
    /// after the vote leaves.
    fn persist(&mut self, _token: PersistToken, vote: &PersistedVote) -> Persisting {
        let (sim, index) = (&mut *self.sim, self.index);
        let durable = sim.nodes[index].durable_vote.clone();
        if vote.term < durable.term
            || (vote.term == durable.term
                && durable.voted_for.is_some()
                && vote.voted_for != durable.voted_for)
        {
            let detail = format!("node-{index} persisted {vote:?} after {durable:?}");
            sim.violate(Invariant::VoteNotDurable, detail);
        }
        let encoded = encode_vote(vote);
        let store = sim.nodes[index].store.as_ref().expect("a running node");
        match store.put_setting(VOTE_SETTING, &encoded) {
            Ok(()) => {
                sim.nodes[index].durable_vote = vote.clone();
                Persisting::Durable
            }
            Err(error) => {
                sim.note(format!("node-{index} could not persist its vote: {error}"));
                self.store_failed = true;
                Persisting::Pending
            }
        }
    }

    fn transmit(&mut self, to: NodeId, bytes: Encoded) {
        let to = self
            .sim
            .members
            .iter()
            .position(|member| *member == to)
            .expect("a configured member");
        self.sim.transmit(self.index, to, bytes.to_vec());
    }

    fn read_report(&mut self, request: ReportRequest) -> Answer<ReportRead> {
        let pieces = self.sim.report_pieces(self.index, &request.report_id);
        Answer::Now(pieces.map_or(ReportRead::Unavailable, |pieces| {
            ReportRead::of_chunks(&pieces)
        }))
    }

    fn read_chunks(&mut self, request: ChunksRequest) -> Answer<Vec<(ChunkId, bytes::Bytes)>> {
        let pieces = self.sim.report_pieces(self.index, &request.report_id);
        Answer::Now(request.wanted_among(pieces.unwrap_or_default()))
    }

    /// The node's logs of the window, gathered into a bundle the aggregator fetches like
    /// a report (kept in memory: gone with the process).
    fn gather_logs(&mut self, request: LogsRequest) -> Answer<Option<ReportId>> {
        let LogsRequest {
            signature,
            window_start_ms,
            window_end_ms,
            ..
        } = request;
        let node = &mut self.sim.nodes[self.index];
        let id = &node.id;
        let bundle = ReportId::new(format!("logs.{id}.{signature}.{window_start_ms}"));
        let log = format!("{id} storage log {window_start_ms}..{window_end_ms}\n")
            .repeat(20)
            .into_bytes();
        if node.log_bundles.len() >= LOG_BUNDLES_LEN_MAX {
            node.log_bundles.pop_first();
        }
        node.log_bundles.insert(bundle.clone(), log);
        Answer::Now(Some(bundle))
    }

    fn chunks_offered(
        &mut self,
        _report_id: ReportId,
        chunk_ids: Vec<ChunkId>,
    ) -> Answer<Vec<ChunkId>> {
        let held = &self.sim.nodes[self.index].held_chunks;
        Answer::Now(
            chunk_ids
                .into_iter()
                .filter(|chunk| !held.contains(chunk))
                .collect(),
        )
    }

    fn store_chunk(&mut self, _report_id: ReportId, chunk_id: ChunkId, bytes: bytes::Bytes) {
        assert_eq!(
            ChunkId::of(&bytes),
            chunk_id,
            "the protocol verifies chunks"
        );
        self.sim.nodes[self.index].held_chunks.insert(chunk_id);
    }

    fn upload_report(&mut self, upload: UploadReport) {
        let (sim, index) = (&mut *self.sim, self.index);
        let wanted = sim
            .report_chunks
            .get(&upload.first.report_id)
            .cloned()
            .unwrap_or_default();
        let held = &sim.nodes[index].held_chunks;
        if let Some(missing) = wanted.iter().find(|chunk| !held.contains(chunk)) {
            let detail = format!(
                "node-{index} uploads {} without chunk {missing:?}",
                upload.first.report_id
            );
            sim.violate(Invariant::UploadWithoutChunks, detail);
        }
        let call = upload_call(
            &upload.fence,
            upload.signature,
            Some(upload.first.report_id),
            upload.incidents,
        );
        sim.call_endpoint(index, upload.upload_id, call);
    }

    fn upload_incidents(&mut self, upload: UploadIncidents) {
        let call = upload_call(&upload.fence, upload.signature, None, upload.incidents);
        self.sim.call_endpoint(self.index, upload.upload_id, call);
    }

    fn uploaded(&mut self, report_id: ReportId) {
        let (sim, index) = (&mut *self.sim, self.index);
        if !sim.endpoint.has_report(&report_id) {
            let detail = format!("node-{index} told {report_id} is uploaded");
            sim.violate(Invariant::UploadedButAbsent, detail);
        }
        let key = format!("{UPLOADED_SETTING_PREFIX}{}", report_id.0);
        let store = sim.nodes[index].store.as_ref().expect("a running node");
        if let Err(error) = store.put_setting(&key, b"1") {
            sim.note(format!("node-{index} could not mark {report_id}: {error}"));
            self.store_failed = true;
        }
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::MemberDown(down) => {
                if let Some(since_ms) = self.sim.down_since.remove(&down) {
                    self.sim.detection_ms.push(self.sim.now_ms - since_ms);
                }
            }
            // The simulator's own answers keep the wire's limits: one that does not is
            // a bug of the simulator (the campaign reports the panic with its seed).
            Notice::AnswerRefused(error) => {
                panic!("node-{} refused its shell's answer: {error}", self.index)
            }
            // Feedback, fencing notices and the rest change nothing the simulator checks.
            Notice::AggregatorChanged { .. }
            | Notice::MemberUp(_)
            | Notice::Rejoined { .. }
            | Notice::Fenced { .. }
            | Notice::Feedback { .. } => {}
        }
    }
}

/// What the shell sends the endpoint for an upload the protocol asked for.
fn upload_call(
    fence: &crashmesh_protocol::consolidation::Fence,
    signature: String,
    full_report: Option<ReportId>,
    incidents: Vec<crashmesh_protocol::consolidation::IncidentRecord>,
) -> UploadCall {
    UploadCall {
        cluster: fence.cluster_id.0.clone(),
        term: fence.term,
        signature,
        full_report,
        incidents: incidents
            .into_iter()
            .map(|incident| incident.report_id)
            .collect(),
    }
}
