//! The crate's typed errors.

use std::path::PathBuf;

/// Why a core could not be read at all. Problems inside a readable core (a thread that
/// does not unwind, a library that is missing) are not errors: they end up in the
/// analysis (`analysis_error`, `unwind_error`, module flags).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The core (or a file it names) could not be opened, measured or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The core is larger than `AnalyzeOptions::core_bytes_max`.
    #[error("the core is {size_bytes} bytes, more than the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The core's size.
        size_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The file is not a 64-bit little-endian ELF core.
    #[error("not an ELF core: {0}")]
    NotACore(String),
    /// The core is for a machine this crate does not decode.
    #[error("unsupported architecture: ELF machine {0}")]
    UnsupportedArchitecture(u16),
    /// A note is cut short, points past its segment, or says something impossible.
    #[error("bad note at byte {offset} of the note segment: {reason}")]
    BadNote {
        /// Where the note starts, from the start of the note bytes.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The core claims more of something than this crate accepts.
    #[error("too many {what} in the core: {count}, the limit is {limit}")]
    TooMany {
        /// What there are too many of ("threads", "file mappings", …).
        what: &'static str,
        /// How many the core claims.
        count: u64,
        /// The limit.
        limit: u64,
    },
}
