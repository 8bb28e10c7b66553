//! The store's typed errors.

use crate::ids::{BlobId, ChunkId};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading a blob's input stream failed.
    #[error("reading the blob's input: {0}")]
    Input(#[source] std::io::Error),
    /// Writing a blob to the caller's writer failed.
    #[error("writing the blob out: {0}")]
    Output(#[source] std::io::Error),
    /// The redb index failed.
    #[error("index: {0}")]
    Index(String),
    /// The index was written by a format this build does not know.
    #[error("index format version {found} is not supported (this build reads {supported})")]
    UnsupportedFormat { found: u64, supported: u64 },
    /// A row of the index could not be decoded.
    #[error("index row {what} is undecodable: {detail}")]
    CorruptRow { what: String, detail: String },
    /// The blob is not in the store.
    #[error("blob {0} is not in the store")]
    UnknownBlob(BlobId),
    /// The chunk is not in the store.
    #[error("chunk {0} is not in the store")]
    UnknownChunk(ChunkId),
    /// A chunk the index references has no file.
    #[error("chunk {chunk} of blob {blob} is missing")]
    MissingChunk { blob: BlobId, chunk: ChunkId },
    /// A chunk's bytes do not hash to its id (or do not decompress).
    #[error("chunk {chunk} is corrupt: {detail}")]
    CorruptChunk { chunk: ChunkId, detail: String },
    /// Every chunk verified but the blob as a whole does not hash to its id.
    #[error("blob {0} is corrupt: its content does not hash to its id")]
    CorruptBlob(BlobId),
    /// The problem is not in the store (or an id prefix is ambiguous).
    #[error("problem {0} is not in the store")]
    UnknownProblem(String),
    /// An id prefix matches more than one problem.
    #[error("problem id prefix {0} is ambiguous")]
    AmbiguousProblem(String),
    /// An input exceeds one of the store's limits.
    #[error("{what} exceeds its limit: {value} > {limit}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// An argument is malformed.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(
        operation: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> StoreError {
        StoreError::Io {
            operation,
            path: path.display().to_string(),
            source,
        }
    }
}

macro_rules! index_error_from {
    ($($ty:ty),*) => {
        $(impl From<$ty> for StoreError {
            fn from(error: $ty) -> StoreError {
                StoreError::Index(error.to_string())
            }
        })*
    };
}

index_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<crate::ids::BadId> for StoreError {
    fn from(error: crate::ids::BadId) -> StoreError {
        StoreError::Invalid(error.to_string())
    }
}
