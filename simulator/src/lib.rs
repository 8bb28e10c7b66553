//! crashmesh's fault-injection harness (TigerBeetle's VOPR, quinn's `Pair` for N nodes).
//!
//! Two modes:
//! - **Simulation** ([`cluster::Sim`], [`campaign`]): N nodes, each running the real
//!   protocol state machines ([`crashmesh_protocol::cluster::Node`]) over the real store
//!   ([`crashmesh_store::Store`] on a simulated, fault-injecting disk), a simulated
//!   network, clock and endpoint. Everything — the workload, which faults are enabled
//!   (swarm testing), when they strike — is drawn from one seed: the same seed on the same
//!   commit replays the same trace, byte for byte ([`cluster::SeedReport::trace_hash`]).
//! - **Real processes** ([`real`]): `crashmesh` node processes and the endpoint on
//!   loopback, killed, stopped and restarted, checked through the endpoint's HTTP API.
//!
//! Invariants of the crate:
//! - No wall clock and no thread scheduling reach a simulated run: one seeded generator
//!   drives it, the disk draws from its own seed, and campaigns run seeds on worker threads
//!   but combine results in seed order.
//! - The simulator checks, it does not decide: protocol logic stays in `crashmesh-protocol`;
//!   the simulated endpoint models the real endpoint's rules (fencing by term, idempotence
//!   by report id, grouping by signature) and nothing else.

pub mod campaign;
pub mod clock;
pub mod cluster;
pub mod disk;
pub mod endpoint;
pub mod faults;
pub mod invariants;
pub mod network;
pub mod real;
pub mod scale;
pub mod svg;
pub mod workload;

pub use campaign::{CampaignConfig, CampaignSummary, run_campaign};
pub use cluster::{SeedReport, Sim, SimConfig};
pub use faults::Sabotage;
