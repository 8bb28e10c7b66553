//! The capture room's configuration (`[capture]`, `[python]`) and the size type every
//! room's configuration uses. The binary's configuration assembles the rooms' types into
//! one TOML file (`crashmesh config defaults`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A byte count written as `"40 MiB"`, `"5 GiB"` or a plain number in TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_bytes(self.0))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => text
                .parse::<bytesize::ByteSize>()
                .map(|size| ByteSize(size.as_u64()))
                .map_err(|error| serde::de::Error::custom(format!("bad size {text:?}: {error}"))),
        }
    }
}

/// `1048576` → `"1 MiB"`: exact binary units when they fit, bytes otherwise.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}

/// `[capture]`: the core_pattern hook's guards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// A second crash of the same executable within this window only counts.
    pub repeat_window_secs: u64,
    /// Cores larger than this are truncated and marked so.
    pub core_bytes_max: ByteSize,
    /// Below this much free space the hook keeps the metadata and drops the core.
    pub min_free_bytes: ByteSize,
    /// The hook gives up on the core after this long, so the kernel is never held forever.
    pub time_limit_secs: u64,
    /// zstd level for cores in the spool (1 is fastest).
    pub compression_level: i32,
    /// Executables whose crashes are ignored: glob patterns on the executable's path.
    pub ignore_paths: Vec<String>,
    /// Bytes kept of each /proc file in the snapshot.
    pub proc_file_bytes_max: ByteSize,
}

impl Default for CaptureConfig {
    fn default() -> CaptureConfig {
        CaptureConfig {
            repeat_window_secs: 20,
            core_bytes_max: ByteSize(16 * 1024 * 1024 * 1024),
            min_free_bytes: ByteSize(256 * 1024 * 1024),
            time_limit_secs: 300,
            compression_level: 1,
            ignore_paths: Vec::new(),
            proc_file_bytes_max: ByteSize(4 * 1024 * 1024),
        }
    }
}

/// `[python]`: the interpreter hook `crashmesh install` puts in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonConfig {
    /// Install the hook at all.
    pub enabled: bool,
    /// Interpreters to hook; empty means every `python3` on PATH.
    pub interpreters: Vec<PathBuf>,
    /// The socket every user's hook reports to; empty means `python.sock` in the data
    /// dir's public sibling, `<data dir>-public/` (the data dir itself is root's alone).
    pub socket: PathBuf,
}

impl Default for PythonConfig {
    fn default() -> PythonConfig {
        PythonConfig {
            enabled: true,
            interpreters: Vec::new(),
            socket: PathBuf::new(),
        }
    }
}
