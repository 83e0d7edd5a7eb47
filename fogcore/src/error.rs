//! The one error type of fogcore. Variants name the input that was wrong so a caller can act.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fogcore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file or device.
    #[error("{path}: {source}")]
    Io {
        /// The file or device.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A disk or partition table that fog cannot use.
    #[error("{path}: {reason}")]
    BadDisk {
        /// The disk image or device.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A filesystem whose metadata is inconsistent.
    #[error("{what}: {reason}")]
    BadFilesystem {
        /// Which partition or filesystem.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The deploy target cannot hold the image.
    #[error("target {path} is too small: {size} bytes, the image needs {needed}")]
    TargetTooSmall {
        /// Target disk.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// Bytes the image needs.
        needed: u64,
    },
    /// A resizing deploy cannot give a partition the room its filesystem needs.
    #[error(
        "target {path} is too small: partition {partition} ({filesystem}) needs {needed} bytes, \
         the target leaves it {available}"
    )]
    PartitionTooSmall {
        /// Target disk.
        path: PathBuf,
        /// Partition number in the image.
        partition: u32,
        /// Its filesystem.
        filesystem: String,
        /// Bytes its filesystem needs at least.
        needed: u64,
        /// Bytes the target's layout leaves it.
        available: u64,
    },
    /// An external tool (resize2fs, ntfsresize, ...) failed, or is not installed.
    #[error("{tool} on {what}: {reason}")]
    ToolFailed {
        /// The program.
        tool: String,
        /// What it ran on (a partition of a target, an image's copy).
        what: String,
        /// Its exit status and last lines of output, or why it could not start.
        reason: String,
    },
    /// The deploy target has another logical sector size than the captured disk.
    #[error("target {path} has {target}-byte sectors, the image was captured from {image}-byte sectors")]
    SectorSizeMismatch {
        /// Target disk.
        path: PathBuf,
        /// Its logical sector size.
        target: u32,
        /// The image's logical sector size.
        image: u32,
    },
    /// No image with that name in the store.
    #[error("no image named {0:?} in the store")]
    ImageNotFound(String),
    /// An image name that is not allowed (empty, path separators, dot files).
    #[error("invalid image name {0:?}: 1 to 64 letters, digits, '.', '-', '_' (not starting with '.' or '-')")]
    InvalidImageName(String),
    /// A manifest that is truncated or damaged.
    #[error("image {image}: manifest {path} is damaged: {reason}")]
    BadManifest {
        /// Image name.
        image: String,
        /// Manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A chunk the image needs is not in the store.
    #[error("image {image}: chunk {chunk} is missing from the store")]
    ChunkMissing {
        /// Image name.
        image: String,
        /// Chunk id (hex).
        chunk: String,
    },
    /// A chunk whose content does not match its hash.
    #[error("image {image}: chunk {chunk} is corrupt: {reason}")]
    ChunkCorrupt {
        /// Image name (or "store" when checked outside an image).
        image: String,
        /// Chunk id (hex).
        chunk: String,
        /// What was wrong.
        reason: String,
    },
    /// Read-back after deploy found different bytes.
    #[error("verify of {path} failed at byte {offset}: written data differs from image {image}")]
    VerifyMismatch {
        /// Target written.
        path: PathBuf,
        /// Image deployed.
        image: String,
        /// First differing offset.
        offset: u64,
    },
    /// Another process holds the store in a way that conflicts (e.g. gc during a capture).
    #[error("store {path} is busy: {reason}")]
    StoreBusy {
        /// Store directory.
        path: PathBuf,
        /// Who holds it.
        reason: String,
    },
    /// A value given by the user that makes no sense.
    #[error("{0}")]
    InvalidInput(String),
    /// The job was stopped by its caller (see `Progress::cancelled`).
    #[error("cancelled")]
    Cancelled,

    // Control plane (hosts, nodes, tasks, the master's API).
    /// A field that fails validation: a MAC, a name, a subnet, a cron line.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// Which field (`mac`, `host name`, `subnet`, ...).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No record with that key.
    #[error("no {kind} {key:?}")]
    NotFound {
        /// `host`, `group`, `image`, `node`, `task`, ...
        kind: &'static str,
        /// The name or id looked up.
        key: String,
    },
    /// The request conflicts with what exists (a name or MAC taken, a host busy with a task).
    #[error("{kind} {key:?}: {reason}")]
    Conflict {
        /// Kind of record.
        kind: &'static str,
        /// Its name or id.
        key: String,
        /// What it conflicts with.
        reason: String,
    },
    /// A task state change that the state machine does not allow.
    #[error("task {task}: cannot go from {from} to {to}")]
    IllegalTransition {
        /// Task id.
        task: i64,
        /// Its state.
        from: String,
        /// The state or event asked for.
        to: String,
    },
    /// A well-formed request that the rules a schema cannot state refuse: a body naming another
    /// record than its path, a task its host cannot take as it stands, a cron line that never
    /// fires. The API answers 422, where 400 means the request breaks its documented schema.
    #[error("cannot accept {field} {value:?}: {reason}")]
    Unprocessable {
        /// What was refused.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A request body over the route's limit (413).
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// No credentials, or credentials that are not known.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Known credentials that do not allow this request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The database failed (not the caller's input). Retrying may help.
    #[error("database: {0}")]
    Database(String),
    /// A master answered with an error.
    #[error("master: {message} ({code}, HTTP {status})")]
    Remote {
        /// HTTP status.
        status: u16,
        /// Error code (`not_found`, `invalid`, ...).
        code: String,
        /// The master's message.
        message: String,
    },
    /// A master could not be reached or answered something that is not fog's API.
    #[error("{url}: {reason}")]
    Http {
        /// The URL asked.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A broken invariant or a crashed worker: fog's own fault, never the caller's input.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is. It decides the HTTP status, the CLI's exit code and
/// whether trying again may help; every frontend maps the kind, never the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// What the caller gave is wrong (a path, a name, a field, a disk that does not fit).
    BadInput,
    /// Well-formed input that the rules refuse as things stand (see [`Error::Unprocessable`]).
    Unprocessable,
    /// A request body over its limit.
    TooLarge,
    /// No record or file with that name.
    NotFound,
    /// The request conflicts with what exists (a name taken, a host busy, a state change refused).
    Conflict,
    /// No credentials, or unknown ones.
    Unauthorized,
    /// Known credentials that do not allow this.
    Forbidden,
    /// Something underneath is unavailable for now (a peer, the database, a busy store):
    /// retrying later may help.
    Transient,
    /// The job was stopped by its caller.
    Cancelled,
    /// A failure underneath that retrying does not fix: I/O, damaged data, a broken invariant.
    Internal,
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The kind of failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => ErrorKind::BadInput,
                _ => ErrorKind::Internal,
            },
            Error::BadDisk { .. }
            | Error::BadFilesystem { .. }
            | Error::TargetTooSmall { .. }
            | Error::PartitionTooSmall { .. }
            | Error::SectorSizeMismatch { .. }
            | Error::InvalidImageName(_)
            | Error::InvalidInput(_)
            | Error::Invalid { .. } => ErrorKind::BadInput,
            Error::Unprocessable { .. } => ErrorKind::Unprocessable,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::ImageNotFound(_) | Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } | Error::IllegalTransition { .. } => ErrorKind::Conflict,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::StoreBusy { .. } | Error::Database(_) | Error::Http { .. } => ErrorKind::Transient,
            Error::Remote { status, .. } => match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                413 => ErrorKind::TooLarge,
                422 => ErrorKind::Unprocessable,
                400..=499 => ErrorKind::BadInput,
                _ => ErrorKind::Transient,
            },
            Error::Cancelled => ErrorKind::Cancelled,
            Error::BadManifest { .. }
            | Error::ChunkMissing { .. }
            | Error::ChunkCorrupt { .. }
            | Error::VerifyMismatch { .. }
            | Error::ToolFailed { .. }
            | Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// True when the error was caused by what the user gave (a path, a name, a record that does
    /// not exist, a refused token), false when something failed underneath. Frontends map this to
    /// exit codes and exception classes.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::BadInput
                | ErrorKind::Unprocessable
                | ErrorKind::TooLarge
                | ErrorKind::NotFound
                | ErrorKind::Conflict
                | ErrorKind::Unauthorized
                | ErrorKind::Forbidden
        )
    }

    /// True for failures worth trying again later: a peer unreachable or in trouble (5xx), the
    /// database, a busy store. A refusal stays a refusal.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The HTTP status that answers this error.
    pub fn http_status(&self) -> u16 {
        match self.kind() {
            ErrorKind::BadInput => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unprocessable => 422,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Transient => match self {
                Error::Remote { .. } | Error::Http { .. } => 502,
                _ => 503,
            },
            ErrorKind::Cancelled | ErrorKind::Internal => 500,
        }
    }

    /// A short stable code for the wire (`{code, message}` JSON errors of the master's API).
    pub fn code(&self) -> &'static str {
        match self {
            Error::IllegalTransition { .. } => "illegal_transition",
            Error::StoreBusy { .. } => "busy",
            Error::Database(_) => "database",
            Error::Remote { .. } | Error::Http { .. } => "upstream",
            _ => match self.kind() {
                ErrorKind::BadInput => "invalid",
                ErrorKind::NotFound => "not_found",
                ErrorKind::Conflict => "conflict",
                ErrorKind::Unauthorized => "unauthorized",
                ErrorKind::Forbidden => "forbidden",
                ErrorKind::TooLarge => "too_large",
                ErrorKind::Unprocessable => "unprocessable",
                ErrorKind::Transient => "unavailable",
                ErrorKind::Cancelled => "cancelled",
                ErrorKind::Internal => "internal",
            },
        }
    }

    /// Every code [`Error::code`] gives, and the router's own `method_not_allowed`: what the
    /// API's error body documents.
    pub const CODES: [&'static str; 15] = [
        "invalid",
        "unprocessable",
        "too_large",
        "not_found",
        "conflict",
        "illegal_transition",
        "unauthorized",
        "forbidden",
        "busy",
        "database",
        "upstream",
        "unavailable",
        "cancelled",
        "internal",
        "method_not_allowed",
    ];

    /// Builds an [`Error::Internal`] (a broken invariant, a worker that panicked).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }

    /// Builds an [`Error::Invalid`].
    pub fn invalid(field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Unprocessable`].
    pub fn unprocessable(field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unprocessable {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::NotFound`].
    pub fn not_found(kind: &'static str, key: impl ToString) -> Self {
        Error::NotFound {
            kind,
            key: key.to_string(),
        }
    }

    /// Builds an [`Error::Conflict`].
    pub fn conflict(kind: &'static str, key: impl ToString, reason: impl Into<String>) -> Self {
        Error::Conflict {
            kind,
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
