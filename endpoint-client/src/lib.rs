//! A small blocking client of the endpoint's upload protocol: cutting a blob into chunks
//! the way the node's store does (FastCDC v2020 with the sizes of
//! [`crashmesh_protocol::chunk`], blake3 ids, one zstd frame per chunk) and uploading a
//! report (manifest → missing chunks → complete), plus plain authenticated requests. The
//! node's uploader, the endpoint's load generator and the tests use it.
//!
//! Architecture invariant: this crate knows the endpoint only by its protocol
//! ([`crashmesh_protocol::report`]); it does not link the endpoint's server (nor
//! actix-web), so a node that uploads does not carry the server it uploads to.

use std::time::Duration;

use crashmesh_protocol::chunk::{CHUNK_BYTES_AVG, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, ZSTD_LEVEL};
use crashmesh_protocol::report::{BlobManifest, IncidentUpdate, ReportManifest, UploadReply};

/// How long opening a connection to the endpoint may take before the call fails (and the
/// caller retries on a fresh one).
pub const CONNECT_TIMEOUT_SECS: u64 = 5;

/// A chunk ready to send: its id and its zstd frame.
#[derive(Clone, Debug)]
pub struct ChunkData {
    pub id: String,
    pub compressed: Vec<u8>,
}

/// Cuts `bytes` into chunks as the node's store does and compresses each.
pub fn chunk_blob(bytes: &[u8]) -> (BlobManifest, Vec<ChunkData>) {
    let mut chunks = Vec::new();
    let mut manifest_chunks = Vec::new();
    for cut in
        fastcdc::v2020::FastCDC::new(bytes, CHUNK_BYTES_MIN, CHUNK_BYTES_AVG, CHUNK_BYTES_MAX)
    {
        let raw = &bytes[cut.offset..cut.offset + cut.length];
        let id = blake3::hash(raw).to_hex().to_string();
        let compressed = zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd compresses");
        manifest_chunks.push((id.clone(), raw.len() as u32));
        chunks.push(ChunkData { id, compressed });
    }
    let manifest = BlobManifest {
        blob_id: blake3::hash(bytes).to_hex().to_string(),
        len_bytes: bytes.len() as u64,
        chunks: manifest_chunks,
    };
    (manifest, chunks)
}

/// An HTTP answer: status and body text.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as an upload reply.
    pub fn reply(&self) -> Option<UploadReply> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (connection refused, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// An answer that is not a success.
    #[error("HTTP {status}: {body}")]
    Refused { status: u16, body: String },
}

/// A blocking client for one endpoint and one token.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    token: String,
}

impl Client {
    /// A client of `base_url` (`http://127.0.0.1:8470`) with a bearer token.
    pub fn new(base_url: &str, token: &str) -> Client {
        Client::build(base_url, token, None)
    }

    /// A client of an `https://` endpoint whose certificate chains to one of the CA
    /// certificates in `ca_pem` (a private CA; nothing else is trusted). TLS runs on
    /// rustls with the aws-lc-rs provider.
    pub fn with_ca(base_url: &str, token: &str, ca_pem: &[u8]) -> Result<Client, ClientError> {
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(ca_pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(certificate)) => roots.push(certificate),
                Ok(_) => {}
                Err(error) => {
                    return Err(ClientError::Transport(format!(
                        "the CA certificate file: {error}"
                    )));
                }
            }
        }
        if roots.is_empty() {
            return Err(ClientError::Transport(
                "the CA certificate file holds no certificate".to_string(),
            ));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .build();
        Ok(Client::build(base_url, token, Some(tls)))
    }

    fn build(base_url: &str, token: &str, tls: Option<ureq::tls::TlsConfig>) -> Client {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            // A connect not done by then is lost; failing it lets the consolidation retry
            // on a fresh one rather than hold the upload worker for the whole timeout.
            .timeout_connect(Some(Duration::from_secs(CONNECT_TIMEOUT_SECS)))
            .max_idle_connections_per_host(64);
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        let agent: ureq::Agent = config.build().into();
        Client {
            agent,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    /// The token the client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn finish(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, ClientError> {
        let mut response = result.map_err(|error| ClientError::Transport(error.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|error| ClientError::Transport(error.to_string()))?;
        Ok(Answer { status, body })
    }

    fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// POSTs raw bytes as JSON to a path.
    pub fn post(&self, path: &str, body: &[u8]) -> Result<Answer, ClientError> {
        Self::finish(
            self.agent
                .post(format!("{}{path}", self.base_url))
                .header("Authorization", self.authorization())
                .header("Content-Type", "application/json")
                .send(body),
        )
    }

    /// PUTs raw bytes to a path.
    pub fn put(&self, path: &str, body: &[u8]) -> Result<Answer, ClientError> {
        Self::finish(
            self.agent
                .put(format!("{}{path}", self.base_url))
                .header("Authorization", self.authorization())
                .header("Content-Type", "application/zstd")
                .send(body),
        )
    }

    /// GETs a path.
    pub fn get(&self, path: &str) -> Result<Answer, ClientError> {
        Self::finish(
            self.agent
                .get(format!("{}{path}", self.base_url))
                .header("Authorization", self.authorization())
                .call(),
        )
    }

    fn expect_reply(answer: Answer) -> Result<(u16, UploadReply), ClientError> {
        match answer.reply() {
            Some(reply) if answer.status == 200 || answer.status == 202 => {
                Ok((answer.status, reply))
            }
            _ => Err(ClientError::Refused {
                status: answer.status,
                body: answer.body,
            }),
        }
    }

    /// Uploads a report: the manifest, the chunks the endpoint lacks, the completion.
    /// `chunks` must hold every chunk the manifest names (extra ones are ignored).
    pub fn upload(
        &self,
        manifest: &ReportManifest,
        chunks: &[ChunkData],
    ) -> Result<UploadReply, ClientError> {
        let body = serde_json::to_vec(manifest).expect("a manifest serializes");
        let (status, reply) = Self::expect_reply(self.post("/api/v1/reports", &body)?)?;
        if status == 200 {
            return Ok(reply);
        }
        for id in &reply.missing_chunks {
            let Some(chunk) = chunks.iter().find(|chunk| &chunk.id == id) else {
                return Err(ClientError::Refused {
                    status,
                    body: format!("the endpoint wants chunk {id}, which this report lacks"),
                });
            };
            let answer = self.put(&format!("/api/v1/chunks/{id}"), &chunk.compressed)?;
            if answer.status != 204 && answer.status != 200 {
                return Err(ClientError::Refused {
                    status: answer.status,
                    body: answer.body,
                });
            }
        }
        let path = format!("/api/v1/reports/{}/complete", manifest.report_id);
        let (status, reply) = Self::expect_reply(self.post(&path, b"")?)?;
        if status != 200 {
            return Err(ClientError::Refused {
                status,
                body: format!("still missing: {:?}", reply.missing_chunks),
            });
        }
        Ok(reply)
    }

    /// Sends an incident update.
    pub fn update(&self, update: &IncidentUpdate) -> Result<UploadReply, ClientError> {
        let body = serde_json::to_vec(update).expect("an update serializes");
        Self::expect_reply(self.post("/api/v1/incidents", &body)?).map(|(_, reply)| reply)
    }
}
