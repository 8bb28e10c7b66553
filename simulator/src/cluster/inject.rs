//! Scheduling the workload and the seed's faults, applying each fault, and healing.

#[allow(unused_imports)]
use super::*;

impl Sim {
    pub(super) fn schedule_workload(&mut self) {
        let bursts = match self.config.bursts {
            Some(bursts) => bursts,
            None => self.rng.range_u64(0, 3),
        };
        let arrivals = workload::draw_arrivals(
            &mut self.rng,
            self.config.nodes,
            2_000,
            self.config.safety_ms,
            self.config.time_compression,
            bursts,
        );
        for arrival in arrivals {
            self.schedule(
                arrival.at_ms,
                Event::Arrival {
                    node: arrival.node,
                    signature: arrival.signature,
                },
            );
        }
    }

    pub(super) fn schedule_faults(&mut self) {
        // The network kinds act on every datagram; these strike at scheduled moments.
        let active: Vec<FaultKind> = FaultKind::ALL
            .into_iter()
            .filter(|kind| !kind.is_network() && self.plan.has(*kind))
            .collect();
        if active.is_empty() {
            return;
        }
        let interval_ms = self.plan.fault_interval_ms;
        let mut at_ms = 1_000;
        loop {
            at_ms += self.rng.range_u64(interval_ms / 2, interval_ms * 3 / 2 + 1);
            if at_ms >= self.config.safety_ms {
                break;
            }
            let kind = active[self.rng.range_u64(0, active.len() as u64) as usize];
            let prefer_aggregator = self.rng.chance(1, 2);
            let action = match kind {
                FaultKind::Partition => {
                    let partition = match self.rng.range_u64(0, 3) {
                        0 => PartitionKind::IsolateOne,
                        1 => PartitionKind::MajorityMinority,
                        _ => PartitionKind::Asymmetric,
                    };
                    let heal_ms = at_ms + self.rng.range_u64(1_000, 15_000);
                    self.schedule(heal_ms, Event::Fault(FaultAction::HealPartitions));
                    FaultAction::Partition(partition)
                }
                FaultKind::NodeKill => FaultAction::Kill { prefer_aggregator },
                FaultKind::Pause => FaultAction::Pause { prefer_aggregator },
                FaultKind::ClockSkew => {
                    if self.rng.chance(1, 2) {
                        FaultAction::ClockDrift
                    } else {
                        FaultAction::ClockStep
                    }
                }
                FaultKind::DiskFault => {
                    if self.rng.chance(1, 2) {
                        FaultAction::DiskErrors
                    } else {
                        FaultAction::DiskFull
                    }
                }
                _ => {
                    let back_ms = at_ms + self.rng.range_u64(1_000, 20_000);
                    self.schedule(back_ms, Event::Fault(FaultAction::EndpointBack));
                    FaultAction::EndpointOutage {
                        replies_lost: self.rng.chance(1, 2),
                    }
                }
            };
            self.schedule(at_ms, Event::Fault(action));
        }
    }

    // ---- faults ---------------------------------------------------------------------

    pub(super) fn pick_node(&mut self, prefer_aggregator: bool) -> usize {
        if prefer_aggregator
            && let Some(index) = (0..self.nodes.len())
                .find(|&index| self.nodes[index].role == Role::Aggregator && self.running(index))
        {
            return index;
        }
        self.rng.range_u64(0, self.nodes.len() as u64) as usize
    }

    pub(super) fn apply_fault(&mut self, action: FaultAction) {
        if self.healed {
            return;
        }
        let count = self.nodes.len();
        match action {
            FaultAction::Partition(kind) => {
                self.faults.add(FaultKind::Partition, 1);
                match kind {
                    PartitionKind::IsolateOne => {
                        let lonely = self.pick_node(true);
                        let others: Vec<usize> = (0..count).filter(|&i| i != lonely).collect();
                        self.network.split(&[lonely], &others);
                        if self.nodes[lonely].role == Role::Aggregator {
                            self.aggregator_lost();
                        }
                        self.note(format!("partition: node-{lonely} isolated"));
                    }
                    PartitionKind::MajorityMinority => {
                        let minority_len = (count - 1) / 2;
                        let mut order: Vec<usize> = (0..count).collect();
                        for i in (1..count).rev() {
                            let j = self.rng.range_u64(0, i as u64 + 1) as usize;
                            order.swap(i, j);
                        }
                        let (minority, majority) = order.split_at(minority_len.max(1));
                        self.network.split(minority, majority);
                        if minority
                            .iter()
                            .any(|&i| self.nodes[i].role == Role::Aggregator)
                        {
                            self.aggregator_lost();
                        }
                        self.note(format!("partition: minority {minority:?}"));
                    }
                    PartitionKind::Asymmetric => {
                        let from = self.pick_node(true);
                        let to = self.rng.range_u64(0, count as u64) as usize;
                        for other in 0..count {
                            if other != from && (to == from || other == to || count <= 3) {
                                self.network.block(from, other);
                            }
                        }
                        self.note(format!("partition: node-{from} cannot send (one way)"));
                    }
                }
            }
            FaultAction::HealPartitions => {
                self.network.heal();
                self.note("partitions healed".into());
            }
            FaultAction::Kill { prefer_aggregator } => {
                let index = self.pick_node(prefer_aggregator);
                if self.nodes[index].driver.is_some() {
                    self.faults.add(FaultKind::NodeKill, 1);
                    self.kill(index);
                    let restart_ms = self.now_ms + self.rng.range_u64(500, 10_000);
                    self.nodes[index].restart_scheduled = true;
                    self.schedule(restart_ms, Event::Restart { node: index });
                }
            }
            FaultAction::Pause { prefer_aggregator } => {
                let index = self.pick_node(prefer_aggregator);
                if self.running(index) {
                    self.faults.add(FaultKind::Pause, 1);
                    self.nodes[index].paused = true;
                    self.nodes[index].timer_at_ms = None;
                    if self.nodes[index].role == Role::Aggregator {
                        self.aggregator_lost();
                    }
                    let resume_ms = self.now_ms + self.rng.range_u64(500, 8_000);
                    self.schedule(resume_ms, Event::Fault(FaultAction::Resume(index)));
                    self.note(format!("node-{index} paused"));
                }
            }
            FaultAction::Resume(index) => self.resume(index),
            FaultAction::ClockDrift => {
                let index = self.pick_node(false);
                let drift_ppm =
                    self.rng.range_u64(0, 2 * DRIFT_PPM_MAX as u64 + 1) as i64 - DRIFT_PPM_MAX;
                self.faults.add(FaultKind::ClockSkew, 1);
                let now_ms = self.now_ms;
                self.nodes[index].clock.set_drift(now_ms, drift_ppm);
                self.note(format!("node-{index} clock drifts {drift_ppm} ppm"));
                self.after_activity(index);
            }
            FaultAction::ClockStep => {
                let index = self.pick_node(false);
                let step_ms = self.rng.range_u64(100, 5_000);
                self.faults.add(FaultKind::ClockSkew, 1);
                let now_ms = self.now_ms;
                self.nodes[index].clock.step_forward(now_ms, step_ms);
                self.note(format!("node-{index} clock steps {step_ms} ms forward"));
                self.after_activity(index);
            }
            FaultAction::DiskErrors | FaultAction::DiskFull => {
                let index = self.pick_node(false);
                if matches!(action, FaultAction::DiskErrors) {
                    self.nodes[index].disk.faulty().set_faults(true);
                    self.note(format!("node-{index} disk starts failing"));
                } else {
                    self.nodes[index].disk.set_full(true);
                    self.note(format!("node-{index} disk full"));
                }
                let heal_ms = self.now_ms + self.rng.range_u64(1_000, 10_000);
                self.schedule(heal_ms, Event::Fault(FaultAction::DiskHeal(index)));
            }
            FaultAction::DiskHeal(index) => {
                self.nodes[index].disk.faulty().set_faults(false);
                self.nodes[index].disk.set_full(false);
                self.note(format!("node-{index} disk healthy"));
            }
            FaultAction::EndpointOutage { replies_lost } => {
                self.faults.add(FaultKind::EndpointOutage, 1);
                if replies_lost {
                    self.endpoint_replies_lost = true;
                    self.note("endpoint loses its replies".into());
                } else {
                    self.endpoint_down = true;
                    self.note("endpoint down".into());
                }
            }
            FaultAction::EndpointBack => {
                self.endpoint_down = false;
                self.endpoint_replies_lost = false;
                self.note("endpoint back".into());
            }
        }
    }

    pub(super) fn resume(&mut self, index: usize) {
        if self.nodes[index].paused {
            self.nodes[index].paused = false;
            self.note(format!("node-{index} resumed"));
            self.after_activity(index);
        }
    }

    /// The end of the safety phase: every fault healed, every node running.
    pub(super) fn heal(&mut self) {
        self.healed = true;
        self.network = Network::new(0, 0, 1, 5);
        self.endpoint_down = false;
        self.endpoint_replies_lost = false;
        for index in 0..self.nodes.len() {
            self.nodes[index].disk.faulty().set_faults(false);
            self.nodes[index].disk.set_full(false);
            self.resume(index);
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].driver.is_none() {
                self.start(index);
            }
        }
        self.note("healed: liveness phase".into());
    }
}
