//! The log's one error type. Expected conditions are named variants with the facts an operator needs:
//! which file, which offset, which LSN.

use crate::format::Lsn;
use std::fmt;
use std::io;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum WalError {
    /// Damage before the tail: the log refuses to open. Never repaired silently.
    Corrupt {
        file: String,
        offset: u64,
        lsn: Lsn,
        reason: String,
    },
    /// An I/O call failed. During appends this also poisons the log.
    Io {
        op: &'static str,
        file: String,
        error: Arc<io::Error>,
    },
    /// A new segment could not get its space: the append was refused and the log is still healthy.
    NoSpace {
        file: String,
    },
    /// An earlier write or sync failed; the kernel may have dropped the data, so the log refuses every
    /// append from then on. The process must stop and recover from what is on disk.
    Poisoned {
        cause: String,
    },
    RecordTooLarge {
        bytes: usize,
        max: usize,
    },
    /// The caller's replay of a record failed.
    Replay {
        lsn: Lsn,
        reason: String,
    },
    Closed,
}

impl WalError {
    pub(crate) fn io(op: &'static str, file: &str, error: io::Error) -> Self {
        if error.raw_os_error() == Some(28) {
            return WalError::NoSpace { file: file.to_owned() };
        }
        WalError::Io { op, file: file.to_owned(), error: Arc::new(error) }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Corrupt { file, offset, lsn, reason } => {
                write!(f, "corrupt write-ahead log: {file} at offset {offset} (LSN {lsn}): {reason}")
            }
            WalError::Io { op, file, error } => write!(f, "write-ahead log {op} of {file} failed: {error}"),
            WalError::NoSpace { file } => write!(f, "no space left on the device for log segment {file}"),
            WalError::Poisoned { cause } => {
                write!(f, "write-ahead log is poisoned by an earlier failure and refuses writes: {cause}")
            }
            WalError::RecordTooLarge { bytes, max } => {
                write!(f, "log record of {bytes} bytes is larger than the maximum of {max}")
            }
            WalError::Replay { lsn, reason } => write!(f, "replay failed at LSN {lsn}: {reason}"),
            WalError::Closed => write!(f, "write-ahead log is closed"),
        }
    }
}

impl std::error::Error for WalError {}
