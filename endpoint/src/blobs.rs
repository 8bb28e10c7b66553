//! Blob storage: chunks through `object_store` (a local directory by default, an
//! S3-compatible bucket when configured), named `chunks/ab/cdef…` by the blake3 of their
//! uncompressed bytes, each kept as the one zstd frame the node sent (as the node's store
//! keeps it, so `zstd -d` reads one).
//!
//! Invariants: `verify_chunk` runs before `put`, so a stored object always decompresses
//! (within [`crashmesh_store::CHUNK_BYTES_MAX`]) to bytes hashing to its name; ids reach
//! a path only after `is_hex_id`. A chunk is never deleted (the vendor keeps evidence).

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use crashmesh_protocol::report::is_hex_id;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::config::{EndpointConfig, StorageKind};
use crate::error::EndpointError;

/// Existence checks in flight at once for one manifest.
pub const HEADS_IN_FLIGHT_MAX: usize = 32;
/// S3: one connection attempt.
const S3_CONNECT_SECS_MAX: Duration = Duration::from_secs(5);
/// S3: one request, a chunk's PUT included.
const S3_REQUEST_SECS_MAX: Duration = Duration::from_secs(30);

/// Where chunks live.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The local directory, when storage is local and `fsync` is on: chunk files are
    /// written without a sync each, and [`sync_dir`] flushes them all at once before the
    /// transaction that records a report commits.
    sync_dir: Option<std::path::PathBuf>,
    /// Chunks stored so far by this process: the committer syncs only when it grew since
    /// its last sync (a batch of metadata-only reports has nothing to flush).
    chunks_written: Arc<std::sync::atomic::AtomicU64>,
}

/// Makes everything written under `dir` durable with one `syncfs` (file contents and
/// renames of the whole file system), the way the node's store pays for many chunk files.
pub fn sync_dir(dir: &std::path::Path) -> Result<(), EndpointError> {
    let file = std::fs::File::open(dir).map_err(|error| EndpointError::io("open", dir, error))?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `file` keeps open.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(EndpointError::io(
            "syncfs",
            dir,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Checks a compressed chunk against its id; returns the uncompressed bytes.
pub fn verify_chunk(id: &str, compressed: &[u8]) -> Result<Vec<u8>, EndpointError> {
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
    let raw = DECOMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(zstd::bulk::Decompressor::new()?);
            }
            let decompressor = cell.as_mut().expect("made above");
            decompressor.decompress(compressed, crashmesh_store::CHUNK_BYTES_MAX as usize)
        })
        .map_err(|error| EndpointError::BadChunk {
            id: id.to_string(),
            detail: format!("not a zstd frame of at most 512 KiB: {error}"),
        })?;
    if raw.is_empty() {
        return Err(EndpointError::BadChunk {
            id: id.to_string(),
            detail: "empty".into(),
        });
    }
    if blake3::hash(&raw).to_hex().as_str() != id {
        return Err(EndpointError::BadChunk {
            id: id.to_string(),
            detail: "content does not hash to its id".into(),
        });
    }
    Ok(raw)
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
    /// Opens the configured storage.
    pub fn open(config: &EndpointConfig) -> Result<Blobs, EndpointError> {
        let mut sync = None;
        let store: Arc<dyn ObjectStore> = match config.storage.kind {
            StorageKind::Local => {
                let dir = config
                    .storage
                    .dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("blobs"));
                std::fs::create_dir_all(&dir)
                    .map_err(|error| EndpointError::io("create", &dir, error))?;
                if config.storage.fsync {
                    sync = Some(dir.clone());
                }
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?)
            }
            StorageKind::S3 => {
                let s3 = config
                    .storage
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
                Arc::new(builder.build()?)
            }
        };
        Ok(Blobs {
            store,
            sync_dir: sync,
            chunks_written: Arc::default(),
        })
    }

    /// The count of chunks stored so far (see [`Blobs::put`]).
    pub fn chunks_written(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.chunks_written.clone()
    }

    /// The directory the committer syncs before recording reports, if any.
    pub fn sync_dir(&self) -> Option<&std::path::Path> {
        self.sync_dir.as_deref()
    }

    /// True when the chunk is stored.
    pub async fn has(&self, id: &str) -> Result<bool, EndpointError> {
        match self.store.head(&chunk_path(id)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// The ids among `ids` not stored, in order.
    pub async fn missing(&self, ids: &[&str]) -> Result<Vec<String>, EndpointError> {
        let checks = futures_util::stream::iter(ids.iter().map(|id| async move {
            self.has(id)
                .await
                .map(|present| (!present).then(|| id.to_string()))
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

    /// Stores a verified chunk (see [`verify_chunk`]).
    pub async fn put(&self, id: &str, compressed: Bytes) -> Result<(), EndpointError> {
        self.store.put(&chunk_path(id)?, compressed.into()).await?;
        self.chunks_written
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// A chunk's stored (compressed) bytes.
    pub async fn get(&self, id: &str) -> Result<Bytes, EndpointError> {
        match self.store.get(&chunk_path(id)?).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => {
                Err(EndpointError::NotFound(format!("chunk {id}")))
            }
            Err(error) => Err(error.into()),
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
