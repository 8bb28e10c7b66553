//! The endpoint's configuration: one TOML file, every key with a default, so none is
//! needed to start. Each layer owns the type of its tables (`[storage]` the storage
//! layer's, `[[rules]]` and `[webhooks]` the recording layer's, `[limits]` and `[tls]` the
//! HTTP layer's); this module puts them together and checks them.
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
pub use crate::http::{Limits, TlsConfig};
pub use crate::recording::rules::Rule;
pub use crate::recording::symbolize::SymbolsConfig;
pub use crate::recording::webhook::WebhookConfig;
pub use crate::storage::{S3Config, StorageConfig, StorageKind};

/// The whole configuration, each table the type of the layer it configures.
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
    pub rules: Vec<Rule>,
    /// A debuginfod-layout symbol directory (`<dir>/buildid/<id>/debuginfo`); the same
    /// as `[symbols] dir`.
    pub symbols_dir: Option<PathBuf>,
    /// Debug files for re-symbolization: a local directory and debuginfod servers.
    pub symbols: SymbolsConfig,
    /// Where new-bug and comment events are posted.
    pub webhooks: WebhookConfig,
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
            symbols: SymbolsConfig::default(),
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
