//! Following a log forward while it is written, for readers that keep up with it (the Postgres mirror):
//! frames are read in chunks with positional reads from where the last read stopped, so a reader that
//! polls often reads each byte about once instead of loading whole segments. Only records up to an LSN
//! the caller knows to be acknowledged (complete on disk) are read; nothing is written.

use crate::error::WalError;
use crate::format::{
    self, decode_frame, frame_bytes, FrameProblem, Lsn, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::recover::{segment_names, Visit};
use crate::storage::{Storage, StorageFile};
use std::sync::Arc;

/// Bytes read at a time (more when one frame is larger).
const CHUNK_BYTES: usize = 256 * 1024;

struct Open {
    name: String,
    file: Box<dyn StorageFile>,
    size: u64,
}

/// A reader positioned at an LSN of a log.
pub struct Tail {
    storage: Arc<dyn Storage>,
    next_lsn: Lsn,
    segment: Option<Open>,
    /// File offset of the frame holding `next_lsn` in `segment`.
    offset: u64,
    /// Bytes of `segment` read ahead, starting at `buf_offset`; 16-byte aligned so payloads can be read
    /// in place.
    buf: Vec<u128>,
    buf_offset: u64,
    buf_len: usize,
    /// The `to` of the read that filled `buf`: frames past it may have been unwritten when it was read.
    buf_valid_to: Lsn,
}

impl Tail {
    /// A reader whose first record will be `from`. Fails when the log no longer holds `from` (its
    /// segments were removed) or does not reach it yet.
    pub fn new(storage: Arc<dyn Storage>, from: Lsn) -> Result<Tail, WalError> {
        let names = segment_names(&*storage)?;
        let Some((first, name)) = names.iter().rev().find(|(first, _)| *first <= from).cloned() else {
            let oldest = names.first().map_or(1, |(lsn, _)| *lsn);
            return Err(WalError::Corrupt {
                file: names.first().map_or_else(String::new, |(_, n)| n.clone()),
                offset: 0,
                lsn: from,
                reason: format!("the log no longer holds LSN {from}: its oldest record is {oldest}"),
            });
        };
        let mut tail = Tail {
            storage,
            next_lsn: first,
            segment: None,
            offset: SEGMENT_HEADER_BYTES,
            buf: Vec::new(),
            buf_offset: 0,
            buf_len: 0,
            buf_valid_to: 0,
        };
        tail.open_segment(&name, first)?;
        // Skip the records before `from`.
        while tail.next_lsn < from {
            let skipped = tail.read(from - 1, usize::MAX, &mut |_, _| Ok(()))?;
            if skipped == 0 {
                return Err(WalError::Corrupt {
                    file: name,
                    offset: tail.offset,
                    lsn: tail.next_lsn,
                    reason: format!("the log ends before LSN {from}"),
                });
            }
        }
        Ok(tail)
    }

    /// The LSN of the next record `read` hands out.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Hands the records from `next_lsn` through `to` (at most `max` of them) to `visit`, in order, and
    /// returns how many. `to` must not exceed the acknowledged LSN: a record at or below it that is
    /// missing or damaged is corruption.
    pub fn read(&mut self, to: Lsn, max: usize, visit: &mut Visit<'_>) -> Result<usize, WalError> {
        if to > self.buf_valid_to {
            // Read ahead earlier, the bytes of these records may not have been written yet.
            self.buf_len = 0;
            self.buf_valid_to = to;
        }
        let mut n = 0;
        while self.next_lsn <= to && n < max {
            let lsn = self.next_lsn;
            let frame_len = match self.frame_at_offset()? {
                Some(len) => len,
                None => {
                    // This segment's records end here; the next one starts with `lsn`.
                    self.open_segment(&format::segment_name(lsn), lsn)?;
                    continue;
                }
            };
            let start = (self.offset - self.buf_offset) as usize;
            let bytes = &bytemuck::cast_slice::<u128, u8>(&self.buf)[start..start + frame_len];
            let frame = decode_frame(bytes).map_err(|p| self.corrupt(p.describe()))?;
            if frame.lsn != lsn {
                return Err(self.corrupt("a record with another LSN where this one was expected"));
            }
            visit(lsn, frame.payload).map_err(|reason| WalError::Replay { lsn, reason })?;
            self.offset += frame_len as u64;
            self.next_lsn += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Makes the whole frame at `offset` readable in `buf` and returns its length, or `None` where
    /// this segment's records end (unwritten space, or the end of the file).
    fn frame_at_offset(&mut self) -> Result<Option<usize>, WalError> {
        let mut size = self.segment.as_ref().map_or(0, |s| s.size);
        if self.offset + FRAME_HEADER_BYTES as u64 > size {
            // The file may have grown since it was opened (storage that does not preallocate).
            let seg = self.segment.as_mut().expect("a segment is open");
            seg.size = seg.file.size().map_err(|e| WalError::io("stat", &seg.name, e))?;
            size = seg.size;
            if self.offset + FRAME_HEADER_BYTES as u64 > size {
                return Ok(None);
            }
        }
        self.fill(FRAME_HEADER_BYTES)?;
        let start = (self.offset - self.buf_offset) as usize;
        let header = &bytemuck::cast_slice::<u128, u8>(&self.buf)[start..start + FRAME_HEADER_BYTES];
        if header.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > format::RECORD_BYTES_MAX {
            return Err(self.corrupt(FrameProblem::BadLength.describe()));
        }
        let total = frame_bytes(len);
        if self.offset + total as u64 > size {
            return Err(self.corrupt(FrameProblem::Truncated.describe()));
        }
        self.fill(total)?;
        Ok(Some(total))
    }

    /// Ensures `buf` holds `want` bytes from `offset`, reading a chunk from there if it does not.
    fn fill(&mut self, want: usize) -> Result<(), WalError> {
        let have = (self.buf_offset + self.buf_len as u64).saturating_sub(self.offset);
        if self.offset >= self.buf_offset && have >= want as u64 {
            return Ok(());
        }
        let seg = self.segment.as_ref().expect("a segment is open");
        let len = (want.max(CHUNK_BYTES) as u64).min(seg.size - self.offset) as usize;
        self.buf.resize(len.div_ceil(16), 0);
        let bytes = &mut bytemuck::cast_slice_mut::<u128, u8>(&mut self.buf)[..len];
        crate::storage::read_exact_at(&*seg.file, bytes, self.offset)
            .map_err(|e| WalError::io("read", &seg.name, e))?;
        self.buf_offset = self.offset;
        self.buf_len = len;
        Ok(())
    }

    fn open_segment(&mut self, name: &str, first_lsn: Lsn) -> Result<(), WalError> {
        let missing =
            |reason: String| WalError::Corrupt { file: name.to_owned(), offset: 0, lsn: first_lsn, reason };
        let file = self
            .storage
            .open(name)
            .map_err(|e| missing(format!("the segment that continues the log: {e}")))?;
        let size = file.size().map_err(|e| WalError::io("stat", name, e))?;
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        crate::storage::read_exact_at(&*file, &mut header, 0).map_err(|e| WalError::io("read", name, e))?;
        let decoded = format::decode_segment_header(&header).map_err(|r| missing(r.to_owned()))?;
        if decoded.first_lsn != first_lsn {
            return Err(missing(format!("segment starts at LSN {}, not {first_lsn}", decoded.first_lsn)));
        }
        self.segment = Some(Open { name: name.to_owned(), file, size });
        self.offset = SEGMENT_HEADER_BYTES;
        self.buf_len = 0;
        self.buf_offset = 0;
        Ok(())
    }

    fn corrupt(&self, reason: &str) -> WalError {
        let file = self.segment.as_ref().map_or_else(String::new, |s| s.name.clone());
        WalError::Corrupt { file, offset: self.offset, lsn: self.next_lsn, reason: reason.to_owned() }
    }
}
