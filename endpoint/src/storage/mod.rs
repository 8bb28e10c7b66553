//! The storage layer: where bytes and rows are kept, and nothing of what they mean to an
//! upload.
//!
//! - [`db`]: the metadata database (redb): tokens, terms, reports, problems, incidents,
//!   bugs, and the per-cluster rows that [`db::Viewer`]s read through;
//! - [`journal`]: the ingest journal, the committed batches between two checkpoints;
//! - [`packs`] and [`chunk_buffer`]: chunks appended to local pack files, from buffers
//!   aligned for `O_DIRECT`;
//! - [`blobs`]: chunks kept in the packs or in an S3-compatible bucket, verified before
//!   they are kept.
//!
//! Invariants: this layer uses nothing above it (recording, HTTP, the server): opening the
//! database opens its tables and no more, and replaying the journal is the recording
//! layer's (`recording::replay`); it knows no HTTP (no actix-web) and reads no wall clock
//! (the callers pass `now_ms`). Each module states what it guarantees of its files.

pub mod blobs;
pub mod chunk_buffer;
pub mod db;
pub mod journal;
pub mod packs;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use db::{Db, Viewer};

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
