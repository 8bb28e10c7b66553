//! What the node detects beyond cores, each detector writing what it finds into the spool
//! through the one writer (`crashmesh_capture::spool::write_found`), from where the
//! daemon indexes it like a core's entry.
//!
//! - [`kmsg`] + [`hints`]: the kernel log, record by record with a cursor; `segfault at`
//!   lines held for the core they echo.
//! - [`harvest`]: kdump's and pstore's crashes of earlier boots, once each.
//! - [`hs_err`]: JVM fatal error logs; [`vm_guest`]: guest panics in QEMU's logs.
//! - [`python`]: the socket every user's Python hook reports to.
//!
//! All but the Python socket share one shape, [`detector::Detector`]: a look at the
//! machine on a beat, on the blocking pool, one look at a time, that spools what it found
//! before it remembers having seen it. The Python socket is the one that answers (the
//! sender waits while its `/proc` is read), so it is a server.
//!
//! Invariants: a detector spools before it saves the state that says "done", and derives
//! its entry ids from what it found, so a crash in between replays an entry the store
//! records once; every file in a directory others can write is opened through
//! `crashmesh_untrusted`; the Python socket believes the kernel (`SO_PEERCRED`), never
//! the message.

pub mod config;
pub mod detector;
pub mod harvest;
pub mod hints;
pub mod hs_err;
pub mod kmsg;
pub mod python;
pub mod vm_guest;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use crashmesh_capture::clock::Clock;

use crate::detector::PollActor;

/// Where the kernel log is read.
pub const KMSG_PATH: &str = "/dev/kmsg";
/// The harvest looks once; its actor ticks this rarely until it has.
const HARVEST_INTERVAL_SECS: u64 = 3600;

/// What the detectors need from the daemon.
pub struct DetectContext<'a> {
    pub data_dir: &'a Path,
    pub config: &'a config::DetectConfig,
    /// Where the fault-line hints look for cores already indexed.
    pub store: Arc<crashmesh_store::Store>,
    /// `[capture] ignore_paths`: the fault-line hints honour them too.
    pub ignore_paths: Vec<String>,
    pub clock: Arc<dyn Clock>,
}

/// Start every detector the configuration enables but the Python socket (see [`python`]),
/// each as a [`PollActor`]. Must run inside the daemon's actix system.
pub fn start(context: DetectContext<'_>) {
    let DetectContext {
        data_dir,
        config,
        store,
        ignore_paths,
        clock,
    } = context;
    if config.kmsg.enabled {
        let (sender, receiver) = std::sync::mpsc::sync_channel(kmsg::BATCHES_QUEUED_MAX);
        match kmsg::start_reader(KMSG_PATH.into(), sender) {
            Ok(_) => {
                let detector = kmsg::KmsgDetector::new(
                    data_dir,
                    config.kmsg.trust_user_records,
                    Some(store),
                    ignore_paths,
                    Some(receiver),
                );
                let interval = Duration::from_millis(kmsg::POLL_INTERVAL_MS);
                PollActor::new(detector, interval, clock.clone()).start();
                tracing::info!(
                    trust_user_records = config.kmsg.trust_user_records,
                    "reading the kernel log"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read {KMSG_PATH}; the kernel log detector is off")
            }
        }
    }
    if config.kdump.enabled || config.pstore.enabled {
        let detector =
            harvest::HarvestDetector::new(data_dir, config.kdump.clone(), config.pstore.clone());
        PollActor::new(
            detector,
            Duration::from_secs(HARVEST_INTERVAL_SECS),
            clock.clone(),
        )
        .start();
    }
    if config.hs_err.enabled {
        let interval = Duration::from_millis(config.hs_err.poll_interval_ms.max(100));
        let detector = hs_err::HsErrWatcher::new(data_dir, config.hs_err.clone());
        PollActor::new(detector, interval, clock.clone()).start();
    }
    if config.vm_guest.enabled {
        let interval = Duration::from_millis(config.vm_guest.poll_interval_ms.max(100));
        let detector = vm_guest::VmGuestWatcher::new(data_dir, config.vm_guest.clone());
        PollActor::new(detector, interval, clock).start();
    }
}
