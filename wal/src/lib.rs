//! holdfast's write-ahead log. Bytes in, LSNs out, records back on replay: it knows nothing of what the
//! records mean. The byte layout is in `FORMAT.md`.
//!
//! - [`Wal`]: open (recover and replay), append, wait for durability, close. Group commit.
//! - [`snapshot`]: snapshot files (an opaque payload as of an LSN), written atomically, checked on read.
//! - [`read_range`]: records between two LSNs, read without disturbing a log being written.
//! - [`Tail`]: follows a log forward while it is written, reading each byte about once.
//! - [`inspect`]: the whole log checked read-only, every problem named; [`repair`]: cut a torn tail.
//! - [`storage`]: the I/O seam — real files, or a disk in memory that crashes and fails on demand.

mod error;
mod format;
mod inspect;
mod log;
mod recover;
pub mod snapshot;
pub mod storage;
mod tail;

pub use error::WalError;
pub use format::{
    frame_bytes, parse_segment_name, FrameProblem, Lsn, FORMAT_VERSION, FRAME_HEADER_BYTES, RECORD_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
};
pub use inspect::{inspect, repair, Inspection, LogProblem, RecordAt, RecordVisit, SegmentReport};
pub use log::{Durability, FlushObserver, Observer, Wal, WalOptions, SEGMENT_BYTES_MIN};
pub use recover::{read_range, Recovery, TornTail, Visit};
pub use tail::Tail;
