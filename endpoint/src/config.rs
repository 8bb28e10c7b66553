//! The endpoint's configuration: one TOML file, every key with a default, so none is
//! needed to start.
//!
//! ```toml
//! listen = "127.0.0.1:8470"
//! data_dir = "/var/lib/crashmesh-endpoint"
//! public_url = "https://crashes.example.com"   # bug links; default http://LISTEN
//! symbols_dir = "/srv/debuginfod"              # <dir>/buildid/<id>/debuginfo
//!
//! [tls]                                        # absent: plain HTTP
//! cert_file = "cert.pem"
//! key_file = "key.pem"
//!
//! [limits]
//! manifest_bytes_max = 16777216
//! chunk_body_bytes_max = 589824
//! update_bytes_max = 4194304
//! chunks_per_report_max = 65536
//! cluster_reports_per_sec_max = 5000
//! cluster_reports_burst_max = 10000
//! pending_reports_max = 4096
//! cluster_pending_reports_max = 256
//! pending_manifest_bytes_max = 268435456
//! cluster_pending_manifest_bytes_max = 67108864
//! pending_report_secs_max = 3600
//! pending_report_idle_secs_max = 600
//! body_read_secs_max = 60
//! cluster_body_bytes_in_flight_max = 67108864
//! body_bytes_in_flight_max = 536870912
//!
//! [storage]
//! kind = "local"                               # or "s3"
//! fsync = true
//! checkpoint_ms = 1000                         # metadata checkpoints; the journal between
//! # s3: bucket, endpoint, region, access_key_id, secret_access_key, allow_http,
//! # retry_secs_max = 10
//!
//! [webhooks]
//! urls = ["http://tracker.example.com/hook"]
//! timeout_ms = 5000
//! queue_len_max = 1024
//!
//! [[rules]]                                    # uninteresting: kept, counted, hidden
//! kind = "core"
//! executable = "/usr/bin/test-*"
//! signal = 6
//! tainted = true
//! component = "vstorage-*"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EndpointError;

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Address and port to listen on.
    pub listen: String,
    /// Where metadata and (local) blobs live.
    pub data_dir: PathBuf,
    /// The base URL bug links use; default `http://LISTEN`.
    pub public_url: Option<String>,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// TLS (rustls, aws-lc-rs provider); absent means plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Limits on every input.
    pub limits: Limits,
    /// Where blobs go.
    pub storage: StorageConfig,
    /// Rules marking problems uninteresting.
    pub rules: Vec<crate::rules::Rule>,
    /// A debuginfod-layout symbol directory (`<dir>/buildid/<id>/debuginfo`).
    pub symbols_dir: Option<PathBuf>,
    /// Where new-bug and comment events are posted.
    pub webhooks: WebhookConfig,
}

/// Certificate and key, PEM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
}

/// Limits on inputs; each named with its unit last.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest manifest body (413 above).
    pub manifest_bytes_max: usize,
    /// Largest chunk body, compressed (413 above).
    pub chunk_body_bytes_max: usize,
    /// Largest incident update body (413 above).
    pub update_bytes_max: usize,
    /// Chunks one report may name (413 above).
    pub chunks_per_report_max: usize,
    /// Reports, completions and updates per second per cluster (429 above).
    pub cluster_reports_per_sec_max: u32,
    /// Burst allowance of the per-cluster rate.
    pub cluster_reports_burst_max: u32,
    /// Reports waiting for their chunks, over all clusters (429 above).
    pub pending_reports_max: usize,
    /// Reports of one cluster waiting for their chunks (429 above, for that cluster only).
    pub cluster_pending_reports_max: usize,
    /// Manifest bytes held by the reports waiting for their chunks, over all clusters.
    pub pending_manifest_bytes_max: usize,
    /// Manifest bytes held by one cluster's reports waiting for their chunks.
    pub cluster_pending_manifest_bytes_max: usize,
    /// How long a report may wait for its chunks before it is forgotten.
    pub pending_report_secs_max: u64,
    /// How long a waiting report may go without a chunk of it arriving before it is
    /// forgotten (when room is needed).
    pub pending_report_idle_secs_max: u64,
    /// How long a request's body may take to arrive, from its headers (408 and the
    /// connection closed after).
    pub body_read_secs_max: u64,
    /// Body bytes one cluster's requests may be sending at once (by `Content-Length`, else
    /// the route's limit), reserved before a body is read (429 above).
    pub cluster_body_bytes_in_flight_max: usize,
    /// Body bytes all requests may be sending at once (429 above).
    pub body_bytes_in_flight_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            manifest_bytes_max: 16 << 20,
            chunk_body_bytes_max: crashmesh_store::CHUNK_COMPRESSED_BYTES_MAX as usize,
            update_bytes_max: 4 << 20,
            chunks_per_report_max: crashmesh_protocol::report::CHUNKS_PER_REPORT_MAX,
            cluster_reports_per_sec_max: 5000,
            cluster_reports_burst_max: 10_000,
            pending_reports_max: 4096,
            cluster_pending_reports_max: 256,
            pending_manifest_bytes_max: 256 << 20,
            cluster_pending_manifest_bytes_max: 64 << 20,
            pending_report_secs_max: 3600,
            pending_report_idle_secs_max: 600,
            body_read_secs_max: 60,
            cluster_body_bytes_in_flight_max: 64 << 20,
            body_bytes_in_flight_max: 512 << 20,
        }
    }
}

/// Blob storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `local` (under the data dir) or `s3`.
    pub kind: StorageKind,
    /// Local storage's directory; default `DATA_DIR/blobs`.
    pub dir: Option<PathBuf>,
    /// Local storage: make chunks durable (one `fdatasync` per pack file written, per
    /// commit batch) before the reports naming them are recorded (default true).
    pub fsync: bool,
    /// How often the metadata database is checkpointed (ms): between checkpoints a
    /// recorded report is durable in the ingest journal (`DATA_DIR/ingest.journal`),
    /// replayed when the database is next opened after a crash (default 1000; at least 1).
    pub checkpoint_ms: u64,
    /// S3-compatible storage, with `kind = "s3"`.
    pub s3: Option<S3Config>,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            kind: StorageKind::Local,
            dir: None,
            fsync: true,
            checkpoint_ms: 1000,
            s3: None,
        }
    }
}

/// Which blob storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// Files under a local directory.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// An S3-compatible bucket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The service's URL (MinIO, Ceph RGW, …); default AWS.
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// The access key id; default from the environment.
    pub access_key_id: Option<String>,
    /// The secret key; default from the environment.
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP to `endpoint`.
    pub allow_http: bool,
    /// How long one storage operation is retried (with backoff) before the request that
    /// needed it is answered `503` (the uploader retries later); default 10.
    pub retry_secs_max: u64,
}

impl Default for S3Config {
    fn default() -> S3Config {
        S3Config {
            bucket: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            retry_secs_max: 10,
        }
    }
}

/// Webhooks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// URLs every event is posted to.
    pub urls: Vec<String>,
    /// Time allowed for one POST.
    pub timeout_ms: u64,
    /// Events waiting to be sent; more are dropped (and logged).
    pub queue_len_max: usize,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            urls: Vec::new(),
            timeout_ms: 5000,
            queue_len_max: 1024,
        }
    }
}

impl Default for EndpointConfig {
    fn default() -> EndpointConfig {
        EndpointConfig {
            listen: "127.0.0.1:8470".into(),
            data_dir: PathBuf::from("/var/lib/crashmesh-endpoint"),
            public_url: None,
            workers: 0,
            tls: None,
            limits: Limits::default(),
            storage: StorageConfig::default(),
            rules: Vec::new(),
            symbols_dir: None,
            webhooks: WebhookConfig::default(),
        }
    }
}

impl EndpointConfig {
    /// Reads a TOML file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<EndpointConfig, EndpointError> {
        let Some(path) = path else {
            return Ok(EndpointConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| EndpointError::Config(format!("{}: {error}", path.display())))?;
        EndpointConfig::parse(&text)
            .map_err(|error| EndpointError::Config(format!("{}: {error}", path.display())))
    }

    /// Parses TOML text and checks it.
    pub fn parse(text: &str) -> Result<EndpointConfig, EndpointError> {
        let config: EndpointConfig =
            toml::from_str(text).map_err(|error| EndpointError::Config(error.to_string()))?;
        for rule in &config.rules {
            rule.check()?;
        }
        if config.storage.kind == StorageKind::S3 && config.storage.s3.is_none() {
            return Err(EndpointError::Config(
                "storage.kind = \"s3\" needs a [storage.s3] table".into(),
            ));
        }
        Ok(config)
    }

    /// The base of the URLs the endpoint hands out (bug links).
    pub fn public_url(&self, bound: Option<std::net::SocketAddr>) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                match bound {
                    Some(address) => format!("{scheme}://{address}"),
                    None => format!("{scheme}://{}", self.listen),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|line| !line.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|line| !line.starts_with("//! ```"))
            .map(|line| line.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let config = EndpointConfig::parse(&example).unwrap();
        assert_eq!(config.rules.len(), 1);
        assert_eq!(config.webhooks.urls.len(), 1);
        assert!(EndpointConfig::parse("").is_ok());
        assert!(EndpointConfig::parse("nonsense = 1").is_err());
    }
}
