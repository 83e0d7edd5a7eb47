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
    #[error("invalid image name {0:?}: use letters, digits, '.', '-', '_' (not starting with '.')")]
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
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the error was caused by what the user gave (a path, a name, a disk that does not
    /// fit), false when something failed underneath (I/O, a damaged store). Frontends map this to
    /// exit codes and exception classes.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Error::BadDisk { .. }
            | Error::BadFilesystem { .. }
            | Error::TargetTooSmall { .. }
            | Error::SectorSizeMismatch { .. }
            | Error::ImageNotFound(_)
            | Error::InvalidImageName(_)
            | Error::InvalidInput(_) => true,
            Error::BadManifest { .. }
            | Error::ChunkMissing { .. }
            | Error::ChunkCorrupt { .. }
            | Error::VerifyMismatch { .. }
            | Error::StoreBusy { .. }
            | Error::Cancelled => false,
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
