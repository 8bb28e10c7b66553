//! The node's configuration: one TOML file in which every key has a default, so no file
//! is needed to start. `crashmesh config defaults` prints the embedded defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crashmesh_capture::config::{ByteSize, CaptureConfig, PythonConfig, format_bytes};
pub use crashmesh_detect::config::{
    DetectConfig, HsErrConfig, KdumpConfig, KmsgConfig, PstoreConfig, VmGuestConfig,
};
pub use crashmesh_mesh::config::{ClusterConfig, ClusterMember, UploadConfig};

/// The embedded default configuration, documented key by key. Parsing it must give
/// exactly `Config::default()` (a unit test holds the two together).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// The default data directory when neither `--data-dir` nor `[node] data_dir` is given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/crashmesh";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub capture: CaptureConfig,
    pub analysis: AnalysisConfig,
    pub detect: DetectConfig,
    pub python: PythonConfig,
    pub gather: crashmesh_gather::logs::GatherConfig,
    pub events: Vec<crashmesh_gather::events::EventHook>,
    pub cluster: ClusterConfig,
    pub upload: UploadConfig,
    pub privacy: crashmesh_mesh::customer::PrivacyConfig,
}

/// `[node]`: who this node is and where it keeps its data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name in the cluster; empty means the host name.
    pub name: String,
    /// Where the spool and index live; `--data-dir` wins over it.
    pub data_dir: PathBuf,
    /// Free-form labels attached to every problem this node reports (`role`, `test_run`).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            name: String::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            labels: Default::default(),
        }
    }
}

/// `[store]`: the spool's limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Everything in the data dir counts against this.
    pub max_bytes: ByteSize,
    /// Evict until at least this share of the file system is free.
    pub keep_free_percent: u8,
    /// Cores kept per problem; later incidents keep their metadata only.
    pub max_cores_per_signature: u32,
    /// Problems not seen for this long are evicted (uploaded ones first).
    pub max_age_days: u32,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_bytes: ByteSize(5 * 1024 * 1024 * 1024),
            keep_free_percent: 15,
            max_cores_per_signature: 3,
            max_age_days: 30,
        }
    }
}

/// `[analysis]`: limits of the isolated core analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Wall-clock limit of one analysis child process.
    pub time_limit_secs: u64,
    /// Address-space limit of the analysis child process.
    pub memory_bytes_max: ByteSize,
    /// Threads unwound per core.
    pub threads_max: usize,
    /// Frames unwound per thread.
    pub frames_max: usize,
    /// Where separate debug files are looked up (`.build-id/xx/….debug`, debuglink).
    pub debug_dirs: Vec<PathBuf>,
    /// Read compressed DWARF for file:line (see `crashmesh_coredump::AnalyzeOptions`).
    pub decompress_debug_info: bool,
    /// debuginfod servers asked for the debug files of a core's modules that have none
    /// here (default: `DEBUGINFOD_URLS`; empty, none is asked).
    pub debuginfod_urls: Vec<String>,
    /// Room for the debug files fetched (the data dir's `debuginfod/`); the least recently
    /// used go first.
    pub debuginfod_cache_bytes_max: ByteSize,
    /// Time allowed for all the fetches of one core.
    pub debuginfod_timeout_secs: u64,
}

impl Default for AnalysisConfig {
    fn default() -> AnalysisConfig {
        AnalysisConfig {
            time_limit_secs: 120,
            memory_bytes_max: ByteSize(4 * 1024 * 1024 * 1024),
            threads_max: 256,
            frames_max: 256,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            decompress_debug_info: true,
            debuginfod_urls: crashmesh_debuginfod::urls_from_environment(),
            debuginfod_cache_bytes_max: ByteSize(4 * 1024 * 1024 * 1024),
            debuginfod_timeout_secs: 30,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

impl Config {
    /// Read `path`, or the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parse TOML text; missing keys take their defaults.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        let mut config: Config = toml::from_str(text)?;
        config.upload.privacy = config.privacy.clone();
        Ok(config)
    }

    /// The node's name: `[node] name`, else the host name.
    pub fn node_name(&self) -> String {
        if !self.node.name.is_empty() {
            return self.node.name.clone();
        }
        host_name()
    }
}

pub use crashmesh_capture::procsnap::host_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_match_the_code() {
        assert_eq!(
            Config::parse(DEFAULT_CONFIG_TOML).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn sizes_parse_from_text_and_numbers() {
        let config =
            Config::parse("[store]\nmax_bytes = \"40 MiB\"\n[capture]\ncore_bytes_max = 1024\n")
                .unwrap();
        assert_eq!(config.store.max_bytes, ByteSize(40 << 20));
        assert_eq!(config.capture.core_bytes_max, ByteSize(1024));
        assert_eq!(config.capture.repeat_window_secs, 20);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = Config::parse("[store]\nmax_byte = 1\n").unwrap_err();
        assert!(error.to_string().contains("max_byte"), "{error}");
    }

    #[test]
    fn privacy_parses_and_reaches_the_uploader() {
        let config = Config::parse(
            "[privacy]\nmode = \"customer\"\ncustomer_id = \"acme\"\ncores = \"on_request\"\n\
             env_allowlist = [\"PATH\"]\n[[privacy.patterns]]\nname = \"ticket\"\npattern = \"T-[0-9]+\"\n",
        )
        .unwrap();
        assert_eq!(
            config.privacy.mode,
            crashmesh_mesh::customer::PrivacyMode::Customer
        );
        assert_eq!(
            config.privacy.cores,
            crashmesh_mesh::customer::CorePolicy::OnRequest
        );
        assert_eq!(config.privacy.patterns[0].action, "redact");
        assert_eq!(config.upload.privacy, config.privacy);
        assert!(Config::parse("[privacy]\nmode = \"secret\"\n").is_err());
    }

    #[test]
    fn format_bytes_uses_exact_units() {
        assert_eq!(format_bytes(40 << 20), "40 MiB");
        assert_eq!(format_bytes(1500), "1500 B");
    }
}
