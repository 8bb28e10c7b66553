//! Parsers that turn problem texts into [`Problem`]s: kernel logs (whole files and a live
//! `/dev/kmsg` stream), Python tracebacks, JVM `hs_err_pid*.log` files and QEMU/libvirt
//! domain logs.
//!
//! # Architecture invariants
//! - Pure: no file or socket I/O, no clock reads. Time is passed in (`now_ms`), bytes are
//!   passed in, problems come out. This is what lets the parsers be fuzzed and driven by a
//!   daemon actor or the simulator alike.
//! - Bounded: every buffer has a limit named with its unit last (see
//!   [`kernel::KernelLogLimits`]); no input, however long or hostile, makes a parser hold
//!   more than its limits allow or panic.
//! - Signatures come from `crashmesh_protocol::signature` only, so a problem found here
//!   and one found on another node or at the endpoint hash alike.
//!
//! [`Problem`]: crashmesh_protocol::model::Problem

pub mod hs_err;
pub mod kernel;
pub mod kmsg;
pub mod python;
mod text;
pub mod vm_guest;

pub use hs_err::parse_hs_err;
pub use kernel::{KernelLogOptions, parse_kernel_log, parse_kernel_log_with};
pub use kmsg::{KernelLogAssembler, KmsgRecord, KmsgRecordError, parse_kmsg_record};
pub use python::parse_python_tracebacks;
pub use vm_guest::parse_vm_guest_log;
