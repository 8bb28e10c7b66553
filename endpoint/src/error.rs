//! The endpoint's errors, for every layer: each kind with a short stable code
//! ([`EndpointError::code`]); the HTTP layer answers each with its status
//! (`http::error`), the admin socket sends the code along.

use crashmesh_protocol::report::ReportError;

/// Everything that can go wrong, from a bad request to a full disk.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// No or an unknown bearer token (401).
    #[error("missing or unknown token")]
    Unauthorized,
    /// The token belongs to another cluster than the body names (403).
    #[error("the token is for cluster {token_cluster:?}, the request names {named:?}")]
    WrongCluster {
        token_cluster: String,
        named: String,
    },
    /// The body is not what the route takes (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A manifest or update that failed validation (400, or 413 for limits).
    #[error("invalid report: {0}")]
    InvalidReport(#[from] ReportError),
    /// A chunk whose bytes do not decompress or do not hash to its id (400).
    #[error("bad chunk {id}: {detail}")]
    BadChunk { id: String, detail: String },
    /// A body or count over its limit (413).
    #[error("{what} is {value}, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// A cluster over its rate, or too many pending uploads (429).
    #[error("too many requests: {0}")]
    TooMany(String),
    /// A term lower than the highest seen for the cluster (409).
    #[error("stale term {term} for cluster {cluster:?}: {highest} was seen")]
    StaleTerm {
        cluster: String,
        term: u64,
        highest: u64,
    },
    /// A request that contradicts what is stored (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A report id another cluster stored first: a manifest or incident update for it from
    /// any other cluster is refused (409).
    #[error("report {report_id} belongs to another cluster")]
    ForeignReport { report_id: String },
    /// A term further ahead of the cluster's last accepted term than `TERM_STEP_MAX` (of
    /// the recording layer; 409): a term cannot be raised without bound.
    #[error(
        "term {term} for cluster {cluster:?} is more than {step_max} ahead of its last \
         accepted term {highest}"
    )]
    TermTooFar {
        cluster: String,
        term: u64,
        highest: u64,
        step_max: u64,
    },
    /// A request body not received within its deadline (408; the connection is closed).
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    /// A known token without the right to this request, or a form posted from another
    /// site (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A file the endpoint would create exists already, or is a symbolic link (409): it
    /// writes new files only, never through a link.
    #[error("{path} exists (or is a link); the endpoint writes new files only")]
    Exists { path: String },
    /// Nothing by that id (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The metadata database failed (500).
    #[error("database: {0}")]
    Database(String),
    /// Blob storage failed or cannot be reached (503 with `Retry-After`: the uploader
    /// retries later, and nothing of the request was recorded).
    #[error("blob storage unavailable: {0}")]
    Storage(String),
    /// A local file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The metadata database is open in a running `crashmesh endpoint run` (a CLI write
    /// goes to its HTTP API instead).
    #[error("{path} is in use by a running `crashmesh endpoint run`")]
    InUse { path: String },
    /// A stored row that does not decode (500).
    #[error("corrupt stored {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

impl EndpointError {
    /// A local file error with its path.
    pub fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> EndpointError {
        EndpointError::Io {
            what,
            path: path.display().to_string(),
            source,
        }
    }

    /// A short stable name for the JSON body's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            EndpointError::Unauthorized => "unauthorized",
            EndpointError::WrongCluster { .. } => "wrong_cluster",
            EndpointError::BadRequest(_) => "bad_request",
            EndpointError::InvalidReport(error) if error.is_limit() => "too_large",
            EndpointError::InvalidReport(_) => "invalid_report",
            EndpointError::BadChunk { .. } => "bad_chunk",
            EndpointError::TooLarge { .. } => "too_large",
            EndpointError::TooMany(_) => "too_many_requests",
            EndpointError::StaleTerm { .. } => "stale_term",
            EndpointError::Conflict(_) => "conflict",
            EndpointError::ForeignReport { .. } => "foreign_report",
            EndpointError::TermTooFar { .. } => "term_too_far",
            EndpointError::BodyTimeout { .. } => "body_timeout",
            EndpointError::Forbidden(_) => "forbidden",
            EndpointError::Exists { .. } => "exists",
            EndpointError::NotFound(_) => "not_found",
            EndpointError::Config(_) => "config",
            EndpointError::Database(_) => "database",
            EndpointError::Storage(_) => "storage",
            EndpointError::Io { .. } => "io",
            EndpointError::InUse { .. } => "in_use",
            EndpointError::Corrupt { .. } => "corrupt",
        }
    }
}

macro_rules! database_error {
    ($($source:ty),*) => {
        $(impl From<$source> for EndpointError {
            fn from(error: $source) -> EndpointError {
                EndpointError::Database(error.to_string())
            }
        })*
    };
}

database_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A file the endpoint opens or creates as one someone may have planted something at
/// (`crashmesh_untrusted`): something already there is [`EndpointError::Exists`].
impl From<crashmesh_untrusted::OpenError> for EndpointError {
    fn from(error: crashmesh_untrusted::OpenError) -> EndpointError {
        match error {
            crashmesh_untrusted::OpenError::Exists { path } => EndpointError::Exists {
                path: path.display().to_string(),
            },
            crashmesh_untrusted::OpenError::Io { path, source } => {
                EndpointError::io("open", &path, source)
            }
            other => EndpointError::Exists {
                path: other.to_string(),
            },
        }
    }
}

impl From<object_store::Error> for EndpointError {
    fn from(error: object_store::Error) -> EndpointError {
        EndpointError::Storage(error.to_string())
    }
}
