//! crashmesh's data model (problems, frames, signatures, incidents) and, as the mesh
//! grows, the cluster logic as pure state machines.
//!
//! Architecture invariant: this crate does no I/O and reads no clock. Every function
//! takes what it needs (including `now`) as arguments. That is what lets the simulator run
//! the very code the daemon runs, deterministically.

pub mod chunk;
pub mod cluster;
pub mod consolidation;
pub mod driver;
pub mod election;
pub mod membership;
pub mod model;
pub mod report;
pub mod rng;
pub mod signature;
pub mod similarity;
pub mod wire;

pub use model::{Frame, FrameSource, Problem, ProblemKind, ThreadTrace};
pub use signature::{SIGNATURE_SCHEME_VERSION, Signature, problem_id_for};
