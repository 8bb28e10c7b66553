//! The mesh's configuration (`[cluster]`, `[upload]`), assembled into the node's one TOML
//! file by the daemon's configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[cluster]`: the mesh (see [`crate::actor`]). Off by default: the node runs standalone.
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
    /// `[privacy]`, copied here by `Config::parse`: the uploader is built from
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
