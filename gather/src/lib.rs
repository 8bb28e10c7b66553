//! What the node gathers around a problem, beyond what the crash itself left:
//!
//! - [`logs`]: the node's own logs of the problem's window, by `[[gather.rules]]` per
//!   problem kind and executable, cut to the window and fit to a budget. The daemon
//!   gathers them for its own incidents; the mesh for a peer that asks for the logs of its
//!   problem's window.
//! - [`events`]: the operator's `[[events]]` commands, run when a problem is created, an
//!   incident counted or an upload done, their output kept with the incident.
//!
//! Invariant: gathering and events never block or fail capture; what could not be read
//! is a note beside what was.

pub mod events;
pub mod logs;
