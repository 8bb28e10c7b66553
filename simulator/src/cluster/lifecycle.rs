//! Starting, killing and restarting a simulated node's process, and what its spool
//! (the store) gives back at start: the durable vote and the incidents to re-announce.

#[allow(unused_imports)]
use super::*;

impl Sim {
    // ---- node lifecycle -------------------------------------------------------------

    /// Starts (or restarts) a node's process: the disk comes back as the crash left it, the
    /// store opens (recovery), the vote and the incidents are read back and re-announced.
    pub(super) fn start(&mut self, index: usize) {
        self.nodes[index].restart_scheduled = false;
        if self.nodes[index].driver.is_some() {
            return;
        }
        let sim_node = &mut self.nodes[index];
        if sim_node.process > 0 && sim_node.disk.faulty().is_crashed() {
            sim_node.disk.faulty().restart();
        }
        sim_node.process += 1;
        let process = sim_node.process;
        let disk: Arc<dyn crashmesh_store::Fs> = Arc::new(sim_node.disk.clone());
        let opened = Store::open_with_fs(disk, Path::new(DATA_DIR), store_config())
            .map_err(|error| error.to_string())
            .and_then(|store| {
                let vote = read_vote(&store)?;
                let announcements = read_announcements(&store)?;
                Ok((store, vote, announcements))
            });
        let (store, vote, announcements) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.note(format!("node-{index} could not start: {error}"));
                self.crash_and_restart(index);
                return;
            }
        };
        let durable = &self.nodes[index].durable_vote;
        if vote.term < durable.term
            || (vote.term == durable.term && durable.voted_for.is_some() && vote != *durable)
        {
            let detail =
                format!("node-{index} read back {vote:?} but {durable:?} was acknowledged durable");
            self.violate(Invariant::VoteNotDurable, detail);
        }
        let now_local = self.local_ms(index);
        let mut config = NodeConfig::new(
            self.nodes[index].id.clone(),
            ClusterId::new(CLUSTER_ID),
            self.members.clone(),
            self.now_ms * 16 + process,
        );
        // Every member is a storage peer whose logs of a problem's window go up with it.
        config.consolidation.log_peers = self.members.clone();
        let node_seed = self
            .config
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(index as u64 * 7_919 + process);
        let driver = match Driver::new(config, vote.clone(), node_seed, now_local) {
            Ok(driver) => driver,
            Err(error) => panic!("the simulator's node config is invalid: {error}"),
        };
        let sim_node = &mut self.nodes[index];
        sim_node.driver = Some(driver);
        sim_node.store = Some(store);
        sim_node.durable_vote = vote;
        sim_node.held_chunks.clear();
        sim_node.log_bundles.clear();
        sim_node.timer_at_ms = None;
        sim_node.role = Role::Follower;
        let count = announcements.len();
        let id = sim_node.id.clone();
        self.down_since.remove(&id);
        self.note(format!(
            "node-{index} started (process {process}, {count} incidents in its spool)"
        ));
        for announcement in announcements {
            if let Some(node) = self.nodes[index].node_mut()
                && let Err(error) = node.announce(now_local, announcement)
            {
                tracing::debug!(%error, "re-announcement refused");
            }
        }
        self.drain(index);
    }

    /// The process dies (`kill -9`): unsynced writes are lost with the disk's crash.
    pub(super) fn kill(&mut self, index: usize) {
        let sim_node = &mut self.nodes[index];
        if sim_node.driver.is_none() {
            return;
        }
        sim_node.disk.faulty().crash();
        sim_node.driver = None;
        sim_node.store = None;
        sim_node.paused = false;
        sim_node.timer_at_ms = None;
        let id = sim_node.id.clone();
        let was_aggregator = sim_node.role == Role::Aggregator;
        self.down_since.entry(id).or_insert(self.now_ms);
        if was_aggregator {
            self.aggregator_lost();
        }
        self.note(format!("node-{index} killed"));
    }

    /// A store error: the process restarts (the store's documented safe reaction).
    pub(super) fn crash_and_restart(&mut self, index: usize) {
        self.kill(index);
        if !self.nodes[index].restart_scheduled {
            self.nodes[index].restart_scheduled = true;
            self.schedule(
                self.now_ms + RESTART_DELAY_MS,
                Event::Restart { node: index },
            );
        }
    }

    pub(super) fn aggregator_lost(&mut self) {
        if self.leaderless_since.is_none() {
            let term = self
                .nodes
                .iter()
                .filter_map(|node| node.node())
                .map(|node| node.election().term())
                .max()
                .unwrap_or(0);
            self.leaderless_since = Some((self.now_ms, term));
        }
    }
}

fn store_config() -> StoreConfig {
    StoreConfig {
        max_bytes: STORE_MAX_BYTES,
        ..StoreConfig::default()
    }
}

pub(super) fn encode_vote(vote: &PersistedVote) -> Vec<u8> {
    let mut bytes = vote.term.to_le_bytes().to_vec();
    if let Some(voted_for) = &vote.voted_for {
        bytes.extend_from_slice(voted_for.as_str().as_bytes());
    }
    bytes
}

fn decode_vote(bytes: &[u8]) -> Result<PersistedVote, String> {
    let (term, voted_for) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("a vote of {} bytes", bytes.len()))?;
    let voted_for = if voted_for.is_empty() {
        None
    } else {
        let name = std::str::from_utf8(voted_for).map_err(|error| error.to_string())?;
        Some(NodeId::new(name))
    };
    Ok(PersistedVote {
        term: u64::from_le_bytes(*term),
        voted_for,
    })
}

fn read_vote(store: &Store) -> Result<PersistedVote, String> {
    match store
        .get_setting(VOTE_SETTING)
        .map_err(|error| error.to_string())?
    {
        Some(bytes) => decode_vote(&bytes),
        None => Ok(PersistedVote::default()),
    }
}

/// What the spool holds, as the daemon re-announces it at start.
fn read_announcements(store: &Store) -> Result<Vec<Announcement>, String> {
    let mut announcements = Vec::new();
    for summary in store.problems().map_err(|error| error.to_string())? {
        let Some(detail) = store
            .problem(&summary.id)
            .map_err(|error| error.to_string())?
        else {
            continue;
        };
        for incident in detail.incidents {
            let uploaded = store
                .get_setting(&format!("{UPLOADED_SETTING_PREFIX}{}", incident.report_id))
                .map_err(|error| error.to_string())?
                .is_some();
            let report_bytes = incident
                .attachments
                .iter()
                .find(|evidence| evidence.name == "report")
                .map_or(0, |evidence| evidence.len_bytes);
            announcements.push(Announcement {
                report_id: ReportId::new(incident.report_id),
                signature: summary.signature.clone(),
                kind: ProblemKind::Core,
                time_ms: incident.time_ms,
                node: NodeId::new(incident.node),
                report_bytes,
                labels: vec![Label {
                    key: "role".into(),
                    value: "storage".into(),
                }],
                upload_state: if uploaded {
                    UploadState::Uploaded
                } else {
                    UploadState::NotUploaded
                },
            });
        }
    }
    Ok(announcements)
}

pub(super) fn sim_problem(signature: &str) -> Problem {
    Problem {
        kind: ProblemKind::Core,
        reason: format!("storaged killed by SIGSEGV ({signature})"),
        signature: signature.to_string(),
        frames: Vec::new(),
        signal: Some(11),
        executable: Some("/usr/bin/storaged".into()),
        package: None,
        threads: None,
        modules: None,
        taint_flags: None,
        version: None,
        hardware: None,
        process: None,
        exception_type: None,
        message: None,
        text: None,
        analysis_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_round_trips() {
        for vote in [
            PersistedVote::default(),
            PersistedVote {
                term: 7,
                voted_for: Some(NodeId::new("node-3")),
            },
        ] {
            assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        }
        assert!(decode_vote(&[1, 2]).is_err());
    }
}
