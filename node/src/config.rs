//! The node's configuration: one TOML file in which every key has a default, so no file
//! is needed to start. `crashmesh config defaults` prints the embedded defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crashmesh_capture::config::{ByteSize, CaptureConfig, PythonConfig, format_bytes};
pub use crashmesh_detect::config::{
    DetectConfig, HsErrConfig, KdumpConfig, KmsgConfig, PstoreConfig, VmGuestConfig,
};

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
    pub privacy: crate::customer::PrivacyConfig,
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
}

impl Default for AnalysisConfig {
    fn default() -> AnalysisConfig {
        AnalysisConfig {
            time_limit_secs: 120,
            memory_bytes_max: ByteSize(4 * 1024 * 1024 * 1024),
            threads_max: 256,
            frames_max: 256,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
        }
    }
}

/// `[cluster]`: the mesh (see [`crate::mesh`]). Off by default: the node runs standalone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Join the mesh at all.
    pub enabled: bool,
    /// The UDP address the node's QUIC endpoint binds.
    pub listen: String,
    /// Every member of the cluster, this node included (majorities count over this list).
    pub members: Vec<ClusterMember>,
    /// May this node stand for aggregator (false: it votes but never stands).
    pub aggregator: bool,
    /// The cluster CA's certificate; empty means `<data dir>/cluster/ca.pem`.
    pub ca_cert: PathBuf,
    /// `cluster.json` (the cluster id); empty means `<data dir>/cluster/cluster.json`.
    pub cluster_file: PathBuf,
    /// This node's certificate; empty means `<data dir>/cluster/nodes/<name>.pem`.
    pub node_cert: PathBuf,
    /// This node's private key; empty means `<data dir>/cluster/nodes/<name>.key`.
    pub node_key: PathBuf,
    /// The members the aggregator asks for their logs of a new problem's window (the
    /// storage peers); empty means every member.
    pub log_peers: Vec<String>,
    /// The peers' log window starts this long before the problem's first incident.
    pub log_window_before_secs: u64,
    /// … and ends this long after it (a peer answers once the window has passed).
    pub log_window_after_secs: u64,
    /// How long a new problem's report waits for the peers' logs before it goes up
    /// without the missing ones.
    pub log_wait_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            enabled: false,
            listen: "0.0.0.0:7710".to_string(),
            members: Vec::new(),
            aggregator: true,
            ca_cert: PathBuf::new(),
            cluster_file: PathBuf::new(),
            node_cert: PathBuf::new(),
            node_key: PathBuf::new(),
            log_peers: Vec::new(),
            log_window_before_secs: 60,
            log_window_after_secs: 10,
            log_wait_secs: 20,
        }
    }
}

/// `[upload]`: where the aggregator sends the cluster's reports (see [`crate::uploader`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// The endpoint's base URL (`http://127.0.0.1:8470`); empty: nothing is uploaded.
    pub endpoint: String,
    /// The cluster's bearer token (`crashmesh endpoint token create CLUSTER`).
    pub token: String,
    /// A file holding the token (used when `token` is empty).
    pub token_file: PathBuf,
    /// How long one HTTP request may take.
    pub request_timeout_secs: u64,
    /// Attempts of one chunk PUT within an upload before the upload is retried later.
    pub chunk_attempts_max: u32,
    /// The CA certificate (PEM) an `https://` endpoint's certificate must chain to; empty:
    /// the default roots.
    pub ca_cert: PathBuf,
    /// `[privacy]`, copied here by [`Config::parse`]: the uploader is built from
    /// `[upload]` alone and scrubs by it (not a key of `[upload]`).
    #[serde(skip)]
    pub privacy: crate::customer::PrivacyConfig,
}

impl Default for UploadConfig {
    fn default() -> UploadConfig {
        UploadConfig {
            endpoint: String::new(),
            token: String::new(),
            token_file: PathBuf::new(),
            request_timeout_secs: 60,
            chunk_attempts_max: 3,
            ca_cert: PathBuf::new(),
            privacy: crate::customer::PrivacyConfig::default(),
        }
    }
}

/// One `[[cluster.members]]` entry: a node's name (its certificate's) and its address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    /// The node's name, as its certificate states it.
    pub name: String,
    /// `host:port` of its QUIC endpoint.
    pub address: String,
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

/// The kernel's host name (`uname -n`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

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
        assert_eq!(config.privacy.mode, crate::customer::PrivacyMode::Customer);
        assert_eq!(config.privacy.cores, crate::customer::CorePolicy::OnRequest);
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
