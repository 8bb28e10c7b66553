//! The detectors' configuration (`[detect.*]`), assembled into the node's one TOML file by
//! the binary.

use std::path::PathBuf;

use crashmesh_capture::config::ByteSize;
use serde::{Deserialize, Serialize};

/// `[detect]`: the detectors beyond core dumps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub kmsg: KmsgConfig,
    pub kdump: KdumpConfig,
    pub pstore: PstoreConfig,
    pub hs_err: HsErrConfig,
    pub vm_guest: VmGuestConfig,
}

/// `[detect.kmsg]`: the kernel log detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsgConfig {
    /// Read `/dev/kmsg` at all.
    pub enabled: bool,
    /// Count records of user facilities too (tests write oopses into /dev/kmsg).
    pub trust_user_records: bool,
}

impl Default for KmsgConfig {
    fn default() -> KmsgConfig {
        KmsgConfig {
            enabled: true,
            trust_user_records: false,
        }
    }
}

/// `[detect.kdump]`: kernel crashes of the previous boot that kdump saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KdumpConfig {
    /// Harvest kdump's output at daemon start.
    pub enabled: bool,
    /// Directories whose subdirectories hold one crash each (`vmcore-dmesg.txt`, `vmcore`).
    pub dirs: Vec<PathBuf>,
    /// Bytes of a crash's kernel log read (its end is kept when it is longer).
    pub dmesg_bytes_max: ByteSize,
    /// A vmcore is hashed (blake3) only up to this size; larger ones are recorded by
    /// path, size and modification time.
    pub vmcore_hash_bytes_max: ByteSize,
    /// A vmcore is copied into the report only up to this size; 0 never copies one.
    pub vmcore_attach_bytes_max: ByteSize,
}

impl Default for KdumpConfig {
    fn default() -> KdumpConfig {
        KdumpConfig {
            enabled: true,
            dirs: vec![PathBuf::from("/var/crash")],
            dmesg_bytes_max: ByteSize(16 * 1024 * 1024),
            vmcore_hash_bytes_max: ByteSize(2 * 1024 * 1024 * 1024),
            vmcore_attach_bytes_max: ByteSize(0),
        }
    }
}

/// `[detect.pstore]`: kernel crashes of the previous boot kept in persistent storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PstoreConfig {
    /// Harvest pstore records at daemon start.
    pub enabled: bool,
    /// Directories holding `dmesg-<backend>-<id>` records, directly or one level down
    /// (systemd-pstore moves them to `/var/lib/systemd/pstore/<id>/`).
    pub dirs: Vec<PathBuf>,
}

impl Default for PstoreConfig {
    fn default() -> PstoreConfig {
        PstoreConfig {
            enabled: true,
            dirs: vec![
                PathBuf::from("/sys/fs/pstore"),
                PathBuf::from("/var/lib/systemd/pstore"),
            ],
        }
    }
}

/// `[detect.hs_err]`: JVM fatal error logs (`hs_err_pid*.log`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HsErrConfig {
    /// Watch for hs_err files.
    pub enabled: bool,
    /// Directories (glob patterns allowed) searched for `hs_err_pid*.log`, not recursively.
    pub dirs: Vec<String>,
    /// How often the directories are listed.
    pub poll_interval_ms: u64,
    /// A file that stopped growing this long is complete even if its JVM seems alive.
    pub quiet_secs: u64,
    /// Bytes of one hs_err file read and attached.
    pub file_bytes_max: ByteSize,
    /// Files already older than this when first seen are remembered, not reported.
    pub file_age_days_max: u64,
}

impl Default for HsErrConfig {
    fn default() -> HsErrConfig {
        HsErrConfig {
            enabled: true,
            dirs: vec![
                "/tmp".to_string(),
                "/var/tmp".to_string(),
                "/tmp/systemd-private-*/tmp".to_string(),
                "/var/tmp/systemd-private-*/tmp".to_string(),
            ],
            poll_interval_ms: 2000,
            quiet_secs: 10,
            file_bytes_max: ByteSize(16 * 1024 * 1024),
            file_age_days_max: 7,
        }
    }
}

/// `[detect.vm_guest]`: guest panics in QEMU/libvirt domain logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmGuestConfig {
    /// Follow domain logs.
    pub enabled: bool,
    /// Glob patterns of domain logs; the domain is the file name without `.log`.
    pub globs: Vec<String>,
    /// How often the logs are looked at.
    pub poll_interval_ms: u64,
    /// Appended text is read once the log has been quiet this long.
    pub quiet_ms: u64,
    /// Bytes read from one log per poll.
    pub read_bytes_max: ByteSize,
}

impl Default for VmGuestConfig {
    fn default() -> VmGuestConfig {
        VmGuestConfig {
            enabled: true,
            globs: vec!["/var/log/libvirt/qemu/*.log".to_string()],
            poll_interval_ms: 1000,
            quiet_ms: 1000,
            read_bytes_max: ByteSize(1024 * 1024),
        }
    }
}
