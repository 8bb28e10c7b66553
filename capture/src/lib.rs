//! Capturing a crash, with no daemon needed: the room of the node that runs when the
//! kernel calls.
//!
//! - [`hook`]: `crashmesh hook core …`, the kernel's core_pattern handler. It snapshots
//!   `/proc/<pid>` ([`procsnap`]) while the kernel holds the process, streams the core
//!   through zstd, and leaves a complete entry in the spool.
//! - [`spool`]: the entry format and the one writer every producer uses (the hook, the
//!   detectors, the Python socket): an entry appears in `spool/new/` only complete and
//!   durable.
//! - [`install`]: core_pattern set and put back; [`python`]: the Python interpreter hook
//!   put into site-packages and taken out.
//!
//! Invariants: capturing never depends on the daemon; everything written is root's alone
//! (`0700`/`0600`, see docs/security.md); `/proc/<pid>` is read through one descriptor,
//! which cannot come to name another process.

pub mod clock;
pub mod config;
pub mod hook;
pub mod install;
pub mod procsnap;
pub mod python;
pub mod spool;
