//! Blob storage: chunks in local pack files ([`super::packs`], the default) or objects
//! of an S3-compatible bucket through `object_store` (named `chunks/ab/cdef…`), keyed by
//! the blake3 of their uncompressed bytes, each kept as the one zstd frame the node sent
//! (as the node's store keeps it, so `zstd -d` reads one).
//!
//! Invariants: `verify_chunk` runs before anything is stored, so a stored chunk always
//! decompresses (within [`crashmesh_protocol::chunk::CHUNK_BYTES_MAX`]) to bytes hashing to its id;
//! ids reach a path only after `is_hex_id`. A chunk is never deleted (the vendor keeps
//! evidence). An S3 PUT is durable when answered; local chunks are made durable by the
//! committer before the reports naming them are recorded ([`Blobs::stage`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crashmesh_protocol::report::is_hex_id;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::EndpointError;
use crate::storage::chunk_buffer::ChunkBuffer;
use crate::storage::db::Db;
use crate::storage::packs::{Packs, Staged};
use crate::storage::{StorageConfig, StorageKind};

/// Existence checks in flight at once for one manifest (S3).
pub const HEADS_IN_FLIGHT_MAX: usize = 32;
/// S3: one connection attempt.
const S3_CONNECT_SECS_MAX: Duration = Duration::from_secs(5);
/// S3: one request, a chunk's PUT included.
const S3_REQUEST_SECS_MAX: Duration = Duration::from_secs(30);

/// Where chunks live.
#[derive(Clone)]
pub enum Blobs {
    /// Pack files under a local directory.
    Local(Arc<Packs>),
    /// An object store (S3-compatible).
    Objects(Arc<dyn ObjectStore>),
}

/// Checks a compressed chunk against its id; returns the uncompressed bytes.
pub fn verify_chunk(id: &str, compressed: &[u8]) -> Result<Vec<u8>, EndpointError> {
    let mut raw = Vec::new();
    decompress_and_check(id, compressed, &mut raw)?;
    Ok(raw)
}

/// [`verify_chunk`] into a buffer the thread keeps: what a chunk's upload pays, without
/// an allocation of the largest chunk per chunk. Returns the uncompressed length.
pub fn check_chunk(id: &str, compressed: &[u8]) -> Result<usize, EndpointError> {
    thread_local! {
        static RAW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    RAW.with(|raw| decompress_and_check(id, compressed, &mut raw.borrow_mut()))
}

fn decompress_and_check(
    id: &str,
    compressed: &[u8],
    raw: &mut Vec<u8>,
) -> Result<usize, EndpointError> {
    if !is_hex_id(id) {
        return Err(EndpointError::BadRequest(format!(
            "chunk id {id:?} is not 64 lower-case hex digits"
        )));
    }
    thread_local! {
        // One decompression context per thread, not one per chunk.
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    raw.clear();
    raw.reserve(crashmesh_protocol::chunk::CHUNK_BYTES_MAX as usize);
    DECOMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(zstd::bulk::Decompressor::new()?);
            }
            let decompressor = cell.as_mut().expect("made above");
            decompressor.decompress_to_buffer(compressed, raw)
        })
        .map_err(|error| EndpointError::BadChunk {
            id: id.to_string(),
            detail: format!("not a zstd frame of at most 512 KiB: {error}"),
        })?;
    if raw.is_empty() || raw.len() > crashmesh_protocol::chunk::CHUNK_BYTES_MAX as usize {
        return Err(EndpointError::BadChunk {
            id: id.to_string(),
            detail: format!("{} bytes uncompressed", raw.len()),
        });
    }
    if blake3::hash(raw).to_hex().as_str() != id {
        return Err(EndpointError::BadChunk {
            id: id.to_string(),
            detail: "content does not hash to its id".into(),
        });
    }
    Ok(raw.len())
}

fn chunk_path(id: &str) -> Result<ObjectPath, EndpointError> {
    if !is_hex_id(id) {
        return Err(EndpointError::BadRequest(format!("bad chunk id {id:?}")));
    }
    Ok(ObjectPath::from(format!(
        "chunks/{}/{}",
        &id[..2],
        &id[2..]
    )))
}

impl Blobs {
    /// Opens the configured storage of the data dir `data_dir`; local packs are located
    /// through `db`.
    pub fn open(
        storage: &StorageConfig,
        data_dir: &std::path::Path,
        db: Arc<Db>,
    ) -> Result<Blobs, EndpointError> {
        match storage.kind {
            StorageKind::Local => {
                let dir = storage
                    .dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("blobs"));
                Ok(Blobs::Local(Arc::new(Packs::open(
                    &dir,
                    db,
                    storage.fsync,
                )?)))
            }
            StorageKind::S3 => {
                let s3 = storage
                    .s3
                    .as_ref()
                    .ok_or_else(|| EndpointError::Config("[storage.s3] missing".into()))?;
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_allow_http(s3.allow_http);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = &s3.access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                // Bounded retries: an unreachable service answers the upload 503 within
                // `retry_secs_max` rather than holding it for object_store's 3 minutes.
                let retry_secs_max = Duration::from_secs(s3.retry_secs_max.max(1));
                builder = builder
                    .with_retry(object_store::RetryConfig {
                        retry_timeout: retry_secs_max,
                        ..object_store::RetryConfig::default()
                    })
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_allow_http(s3.allow_http)
                            .with_connect_timeout(S3_CONNECT_SECS_MAX)
                            .with_timeout(S3_REQUEST_SECS_MAX),
                    );
                Ok(Blobs::Objects(Arc::new(builder.build()?)))
            }
        }
    }

    /// Makes the local chunks stored so far durable, for the committer to index in the
    /// transaction that records reports (see [`Packs::stage`]); `None` for S3, whose
    /// chunks are durable when stored.
    pub fn stage(&self) -> Result<Option<Staged>, EndpointError> {
        match self {
            Blobs::Local(packs) => packs.stage().map(Some),
            Blobs::Objects(_) => Ok(None),
        }
    }

    /// True when the chunk is stored.
    pub async fn has(&self, id: &str) -> Result<bool, EndpointError> {
        Ok(self.missing(&[id]).await?.is_empty())
    }

    /// The ids among `ids` not stored, in order.
    pub async fn missing(&self, ids: &[&str]) -> Result<Vec<String>, EndpointError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        for id in ids {
            if !is_hex_id(id) {
                return Err(EndpointError::BadRequest(format!("bad chunk id {id:?}")));
            }
        }
        let store = match self {
            Blobs::Local(packs) => {
                let present = packs.present(ids)?;
                return Ok(ids
                    .iter()
                    .zip(present)
                    .filter(|(_, present)| !present)
                    .map(|(id, _)| id.to_string())
                    .collect());
            }
            Blobs::Objects(store) => store,
        };
        let checks = futures_util::stream::iter(ids.iter().map(|id| async move {
            match store.head(&chunk_path(id)?).await {
                Ok(_) => Ok(None),
                Err(object_store::Error::NotFound { .. }) => Ok(Some(id.to_string())),
                Err(error) => Err(EndpointError::from(error)),
            }
        }))
        .buffered(HEADS_IN_FLIGHT_MAX)
        .collect::<Vec<_>>()
        .await;
        let mut missing = Vec::new();
        for check in checks {
            if let Some(id) = check? {
                missing.push(id);
            }
        }
        Ok(missing)
    }

    /// Verifies a chunk against its id ([`verify_chunk`]) and stores it; returns its
    /// uncompressed length. The chunk is verified on the calling thread: for a chunk of at
    /// most [`crashmesh_protocol::chunk::CHUNK_BYTES_MAX`] that is a decompression and a hash,
    /// cheaper than handing it to another thread (the handoff cost 15% of the payload
    /// throughput), like the manifest's JSON parse. A local chunk is then written by a
    /// pack lane ([`Packs::append`]) while the request is answered.
    pub async fn put_verified(&self, id: &str, chunk: ChunkBuffer) -> Result<usize, EndpointError> {
        let raw_len = check_chunk(id, chunk.frame())?;
        match self {
            Blobs::Local(packs) => packs.append(id, chunk).await?,
            Blobs::Objects(store) => {
                let bytes = Bytes::copy_from_slice(chunk.frame());
                store.put(&chunk_path(id)?, bytes.into()).await?;
            }
        }
        Ok(raw_len)
    }

    /// Report completions waiting for chunks still being written (none for S3).
    pub fn stages_waiting(&self) -> usize {
        match self {
            Blobs::Local(packs) => packs.stages_waiting(),
            Blobs::Objects(_) => 0,
        }
    }

    /// Chunks received and not yet written to their pack (none for S3, whose writes are
    /// done when the PUT is answered).
    pub fn chunks_writing(&self) -> usize {
        match self {
            Blobs::Local(packs) => packs.writing_len(),
            Blobs::Objects(_) => 0,
        }
    }

    /// A chunk's stored (compressed) bytes.
    pub async fn get(&self, id: &str) -> Result<Bytes, EndpointError> {
        let not_found = || EndpointError::NotFound(format!("chunk {id}"));
        match self {
            Blobs::Local(packs) => {
                if !is_hex_id(id) {
                    return Err(EndpointError::BadRequest(format!("bad chunk id {id:?}")));
                }
                let packs = packs.clone();
                let owned = id.to_string();
                tokio::task::spawn_blocking(move || packs.read(&owned))
                    .await
                    .map_err(|error| EndpointError::Database(format!("chunk reader: {error}")))??
                    .map(Bytes::from)
                    .ok_or_else(not_found)
            }
            Blobs::Objects(store) => match store.get(&chunk_path(id)?).await {
                Ok(result) => Ok(result.bytes().await?),
                Err(object_store::Error::NotFound { .. }) => Err(not_found()),
                Err(error) => Err(error.into()),
            },
        }
    }

    /// A blob's whole uncompressed content, verified chunk by chunk and as a whole;
    /// refused above `bytes_max`.
    pub async fn read_blob(
        &self,
        blob: &crashmesh_protocol::report::BlobManifest,
        bytes_max: u64,
    ) -> Result<Vec<u8>, EndpointError> {
        if blob.len_bytes > bytes_max {
            return Err(EndpointError::TooLarge {
                what: "blob bytes",
                value: blob.len_bytes,
                limit: bytes_max,
            });
        }
        let mut out = Vec::with_capacity(blob.len_bytes as usize);
        let mut hasher = blake3::Hasher::new();
        for (id, _) in &blob.chunks {
            let raw = verify_chunk(id, &self.get(id).await?)?;
            hasher.update(&raw);
            out.extend_from_slice(&raw);
        }
        if hasher.finalize().to_hex().as_str() != blob.blob_id {
            return Err(EndpointError::Corrupt {
                what: format!("blob {}", blob.blob_id),
                detail: "its chunks do not hash to its id".into(),
            });
        }
        Ok(out)
    }
}
