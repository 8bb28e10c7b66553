//! The shell around a node, as the daemon's mesh actor is: outputs carried out in order
//! (persist before release), datagrams handed to the network, chunks served from the
//! store, uploads sent to the endpoint; and the workload's problems recorded and announced.

#[allow(unused_imports)]
use super::lifecycle::{encode_vote, sim_problem};
use super::*;

impl Sim {
    // ---- the shell ------------------------------------------------------------------

    /// Carries out a node's outputs in order, as the daemon's mesh actor does.
    pub(super) fn drain(&mut self, index: usize) {
        loop {
            let Some(node) = self.nodes[index].node.as_mut() else {
                return;
            };
            let Some(output) = node.poll_output() else {
                break;
            };
            match output {
                NodeOutput::Persist(vote) => {
                    if !self.persist_vote(index, vote) {
                        return;
                    }
                }
                NodeOutput::Transmit { to, bytes } => {
                    let to = self
                        .members
                        .iter()
                        .position(|member| *member == to)
                        .expect("a configured member");
                    self.transmit(index, to, bytes.to_vec());
                }
                NodeOutput::Membership(MembershipOutput::MemberDown(down)) => {
                    if let Some(since_ms) = self.down_since.remove(&down) {
                        self.detection_ms.push(self.now_ms - since_ms);
                    }
                }
                NodeOutput::AggregatorChanged { .. } | NodeOutput::Membership(_) => {}
                NodeOutput::Consolidation(output) => {
                    if !self.carry_out(index, output) {
                        return;
                    }
                }
            }
        }
        self.after_activity(index);
    }

    /// Makes term and vote durable; false when the store failed (the process restarted).
    pub(super) fn persist_vote(&mut self, index: usize, vote: PersistedVote) -> bool {
        let durable = self.nodes[index].durable_vote.clone();
        if vote.term < durable.term
            || (vote.term == durable.term
                && durable.voted_for.is_some()
                && vote.voted_for != durable.voted_for)
        {
            let detail = format!("node-{index} persisted {vote:?} after {durable:?}");
            self.violate(Invariant::VoteNotDurable, detail);
        }
        let encoded = encode_vote(&vote);
        let store = self.nodes[index].store.as_ref().expect("a running node");
        match store.put_setting(VOTE_SETTING, &encoded) {
            Ok(()) => {
                self.nodes[index].durable_vote = vote;
                true
            }
            Err(error) => {
                self.note(format!("node-{index} could not persist its vote: {error}"));
                self.crash_and_restart(index);
                false
            }
        }
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

    pub(super) fn send(&mut self, index: usize, to: &NodeId, message: Message) {
        let now_local = self.local_ms(index);
        if let Some(node) = self.nodes[index].node.as_mut()
            && let Err(error) = node.send(now_local, to, message)
        {
            tracing::debug!(%error, "message refused");
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

    /// One consolidation effect; false when the process died doing it.
    pub(super) fn carry_out(&mut self, index: usize, output: ConsolidationOutput) -> bool {
        let now_local = self.local_ms(index);
        match output {
            ConsolidationOutput::ServeReport { to, report_id } => {
                let message = match self.report_pieces(index, &report_id) {
                    Some(pieces) => {
                        let chunk_ids: Vec<ChunkId> =
                            pieces.iter().map(|piece| ChunkId::of(piece)).collect();
                        Message::ReportChunks {
                            report_id: report_id.clone(),
                            report_bytes: pieces.iter().map(|piece| piece.len() as u64).sum(),
                            chunk_count: chunk_ids.len() as u32,
                            offset: 0,
                            chunk_ids,
                        }
                    }
                    None => Message::ReportUnavailable { report_id },
                };
                self.send(index, &to, message);
            }
            ConsolidationOutput::ServeChunks {
                to,
                report_id,
                chunk_ids,
            } => {
                for bytes in self.report_pieces(index, &report_id).unwrap_or_default() {
                    let chunk_id = ChunkId::of(&bytes);
                    if chunk_ids.contains(&chunk_id) {
                        let message = Message::ChunkData {
                            report_id: report_id.clone(),
                            chunk_id,
                            bytes: bytes.into(),
                        };
                        self.send(index, &to, message);
                    }
                }
            }
            ConsolidationOutput::ChunksOffered {
                report_id,
                chunk_ids,
            } => {
                let held = &self.nodes[index].held_chunks;
                let missing: Vec<ChunkId> = chunk_ids
                    .into_iter()
                    .filter(|chunk| !held.contains(chunk))
                    .collect();
                if let Some(node) = self.nodes[index].node.as_mut() {
                    node.chunks_missing(now_local, &report_id, missing);
                }
            }
            ConsolidationOutput::StoreChunk {
                chunk_id, bytes, ..
            } => {
                assert_eq!(
                    ChunkId::of(&bytes),
                    chunk_id,
                    "the protocol verifies chunks"
                );
                self.nodes[index].held_chunks.insert(chunk_id);
            }
            ConsolidationOutput::UploadReport(upload) => {
                let wanted = self
                    .report_chunks
                    .get(&upload.first.report_id)
                    .cloned()
                    .unwrap_or_default();
                let held = &self.nodes[index].held_chunks;
                if let Some(missing) = wanted.iter().find(|chunk| !held.contains(chunk)) {
                    let detail = format!(
                        "node-{index} uploads {} without chunk {missing:?}",
                        upload.first.report_id
                    );
                    self.violate(Invariant::UploadWithoutChunks, detail);
                }
                let call = upload_call(
                    &upload.fence,
                    upload.signature,
                    Some(upload.first.report_id),
                    upload.incidents,
                );
                self.call_endpoint(index, upload.upload_id, call);
            }
            ConsolidationOutput::UploadIncidents(upload) => {
                let call = upload_call(&upload.fence, upload.signature, None, upload.incidents);
                self.call_endpoint(index, upload.upload_id, call);
            }
            ConsolidationOutput::Uploaded { report_id } => {
                if !self.endpoint.has_report(&report_id) {
                    let detail = format!("node-{index} told {report_id} is uploaded");
                    self.violate(Invariant::UploadedButAbsent, detail);
                }
                let key = format!("{UPLOADED_SETTING_PREFIX}{}", report_id.0);
                let store = self.nodes[index].store.as_ref().expect("a running node");
                if let Err(error) = store.put_setting(&key, b"1") {
                    self.note(format!("node-{index} could not mark {report_id}: {error}"));
                    self.crash_and_restart(index);
                    return false;
                }
            }
            ConsolidationOutput::ServeLogs {
                to,
                term,
                signature,
                window_start_ms,
                window_end_ms,
                ..
            } => {
                // The node's logs of the window, gathered into a bundle the aggregator
                // fetches like a report (kept in memory: gone with the process).
                let id = self.nodes[index].id.clone();
                let bundle = ReportId::new(format!("logs.{id}.{signature}.{window_start_ms}"));
                let log = format!("{id} storage log {window_start_ms}..{window_end_ms}\n")
                    .repeat(20)
                    .into_bytes();
                if self.nodes[index].log_bundles.len() >= LOG_BUNDLES_LEN_MAX {
                    self.nodes[index].log_bundles.pop_first();
                }
                self.nodes[index].log_bundles.insert(bundle.clone(), log);
                let message = Message::LogReady {
                    term,
                    signature,
                    bundle: Some(bundle),
                };
                self.send(index, &to, message);
            }
            // Feedback and fencing notices change nothing the simulator checks.
            _ => {}
        }
        true
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
        let Some(node) = self.nodes[index].node.as_ref() else {
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
        if self.nodes[index].node.is_none() {
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
        if let Some(node) = self.nodes[index].node.as_mut()
            && let Err(error) = node.announce(local_ms, announcement)
        {
            tracing::debug!(%error, "announcement refused");
        }
        self.drain(index);
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
