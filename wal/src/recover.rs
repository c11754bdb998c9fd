//! Opening a log: every segment is read and checked, records are handed to the caller in order, and a
//! torn tail is cut off.
//!
//! Torn or corrupt? A record frame carries the LSN that opened its group-commit batch (`batch_lsn`),
//! and a batch is written only after the previous one was synced. So when the frame expected to hold
//! LSN `e` is damaged, any valid frame after it whose `batch_lsn` is greater than `e` proves that `e`
//! was synced before the crash: that is corruption, and opening stops. If every valid frame after it
//! belongs to `e`'s own batch (or none exists), that batch was never acknowledged, and the log is cut
//! at the damaged frame: a torn tail. This holds even when the crash persisted the last batch's pages
//! out of order. Zeros where a frame was expected end a segment cleanly only when nothing is written
//! after them (see [`classify_end`]).

use crate::error::WalError;
use crate::format::{self, decode_frame, FrameProblem, Lsn, FRAME_ALIGN, SEGMENT_HEADER_BYTES};
use crate::storage::{read_exact_at, Storage};

/// Receives each replayed record; an `Err` stops opening with `WalError::Replay`.
pub type Visit<'a> = dyn FnMut(Lsn, &[u8]) -> Result<(), String> + 'a;

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The LSN the next append will get.
    pub next_lsn: Lsn,
    /// The first LSN still in the log (1, or later once old segments were removed).
    pub first_lsn: Lsn,
    /// Records found (all of them, not only those handed to the caller).
    pub records: u64,
    pub segments: usize,
    pub torn: Option<TornTail>,
}

/// A tail cut off at opening: the crash interrupted a batch that was never acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: String,
    pub offset: u64,
    /// The LSN the damaged frame should have had; the log continues from it.
    pub lsn: Lsn,
    /// Non-zero bytes removed, in that file and in any later segment.
    pub bytes: u64,
    pub reason: &'static str,
}

/// A segment read into memory, aligned so payloads can be read in place.
pub(crate) struct LoadedSegment {
    pub(crate) name: String,
    pub(crate) first_lsn: Lsn,
    pub(crate) capacity: u64,
    words: Vec<u128>,
    len: usize,
}

impl LoadedSegment {
    pub(crate) fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// Segment names in LSN order.
pub(crate) fn segment_names(storage: &dyn Storage) -> Result<Vec<(Lsn, String)>, WalError> {
    let names = storage.list().map_err(|e| WalError::io("listing", "the log directory", e))?;
    let mut segments: Vec<(Lsn, String)> =
        names.into_iter().filter_map(|n| format::parse_segment_name(&n).map(|lsn| (lsn, n))).collect();
    segments.sort();
    Ok(segments)
}

pub(crate) fn load(storage: &dyn Storage, name: &str) -> Result<LoadedSegment, WalError> {
    let mut segment = read_segment(storage, name)?;
    let header = format::decode_segment_header(segment.bytes()).map_err(|reason| WalError::Corrupt {
        file: name.to_owned(),
        offset: 0,
        lsn: format::parse_segment_name(name).unwrap_or(0),
        reason: reason.to_owned(),
    })?;
    segment.first_lsn = header.first_lsn;
    segment.capacity = header.capacity;
    Ok(segment)
}

/// A segment's bytes, its header not yet checked.
fn read_segment(storage: &dyn Storage, name: &str) -> Result<LoadedSegment, WalError> {
    let file = storage.open(name).map_err(|e| WalError::io("open", name, e))?;
    let len = file.size().map_err(|e| WalError::io("stat", name, e))? as usize;
    let mut words = vec![0u128; len.div_ceil(16)];
    read_exact_at(&*file, &mut bytemuck::cast_slice_mut(&mut words)[..len], 0)
        .map_err(|e| WalError::io("read", name, e))?;
    Ok(LoadedSegment { name: name.to_owned(), first_lsn: 0, capacity: 0, words, len })
}

/// Whether a last segment whose header failed its checks holds records that prove the header was
/// synced, which makes the damage corruption rather than a segment the crash caught being created.
/// A header is synced with the first batch written after it, so the proof is a valid frame sharing
/// the header's sector (the first frame, at offset 64: a sector is written whole or not at all) or a
/// frame of a batch opened after the segment's first LSN (written after a sync). Frames of the first
/// batch alone, further in, may have reached the disk without the header: that batch was never
/// acknowledged.
pub(crate) fn header_proven_synced(
    storage: &dyn Storage,
    name: &str,
    first_lsn: Lsn,
) -> Result<bool, WalError> {
    let seg = read_segment(storage, name)?;
    let bytes = seg.bytes();
    let start = SEGMENT_HEADER_BYTES as usize;
    if bytes.len() <= start {
        return Ok(false);
    }
    let first_frame = decode_frame(&bytes[start..]).is_ok_and(|f| f.lsn == first_lsn);
    Ok(first_frame || later_batch_in(bytes, start, first_lsn))
}

/// Where the valid records of a segment end, and why.
pub(crate) struct Scanned {
    pub(crate) end: usize,
    pub(crate) next_lsn: Lsn,
    pub(crate) problem: Option<FrameProblem>,
}

pub(crate) fn scan_segment(
    seg: &LoadedSegment,
    from: Lsn,
    visit: &mut Visit<'_>,
) -> Result<Scanned, WalError> {
    scan_frames(seg, &mut |lsn, _, payload| {
        if lsn >= from {
            visit(lsn, payload).map_err(|reason| WalError::Replay { lsn, reason })?;
        }
        Ok(())
    })
}

/// Receives each valid frame: its LSN, offset in the segment, and payload.
pub(crate) type FrameVisit<'a> = dyn FnMut(Lsn, usize, &[u8]) -> Result<(), WalError> + 'a;

/// Hands each valid frame of `seg` in LSN order, from its first, to `visit` with its offset, and says
/// where the valid frames end and why.
pub(crate) fn scan_frames(seg: &LoadedSegment, visit: &mut FrameVisit<'_>) -> Result<Scanned, WalError> {
    let bytes = seg.bytes();
    let (mut lsn, mut pos) = (seg.first_lsn, SEGMENT_HEADER_BYTES as usize);
    loop {
        let frame = match decode_frame(&bytes[pos..]) {
            Ok(frame) if frame.lsn == lsn && frame.batch_lsn <= lsn => frame,
            Ok(_) => {
                return Ok(Scanned { end: pos, next_lsn: lsn, problem: Some(FrameProblem::BadChecksum) })
            }
            Err(problem) => return Ok(Scanned { end: pos, next_lsn: lsn, problem: Some(problem) }),
        };
        visit(lsn, pos, frame.payload)?;
        lsn += 1;
        pos += frame.bytes;
    }
}

/// Whether a valid frame from a batch opened after `lsn` lies in `bytes` at or after `from`.
pub(crate) fn later_batch_in(bytes: &[u8], from: usize, lsn: Lsn) -> bool {
    let end = non_zero_bytes(bytes) as usize;
    (from..end)
        .step_by(FRAME_ALIGN)
        .any(|p| decode_frame(&bytes[p..]).is_ok_and(|f| f.batch_lsn > lsn && f.lsn > lsn))
}

/// The torn-or-corrupt rule (see the top of this file): whether a batch opened after `lsn` was written
/// after the damaged frame at `end` of `seg`, in it or in a `later` segment, which proves `lsn` synced.
pub(crate) fn proven_synced(seg: &LoadedSegment, end: usize, lsn: Lsn, later: &[LoadedSegment]) -> bool {
    later_batch_in(seg.bytes(), end + FRAME_ALIGN, lsn)
        || later.iter().any(|s| later_batch_in(s.bytes(), SEGMENT_HEADER_BYTES as usize, lsn))
}

/// How a segment's valid records end, by the torn-or-corrupt rule.
pub(crate) enum SegmentEnd {
    /// Unwritten space, and the log ends here or goes on in the next segment.
    Clean,
    /// A batch that was never acknowledged, from the end on, with every later segment: cut it.
    Torn { reason: &'static str, later: Vec<LoadedSegment> },
    /// Damage before the tail: nothing may be cut.
    Corrupt(String),
}

/// Classifies where the valid records of `seg` end. `next_first` is the first LSN the next segment's
/// name gives; `later` loads the later segments, read only when the rule needs them.
///
/// All-zero bytes where frame `e` was expected end the segment cleanly only when nothing follows them
/// in it and the log ends there or the next segment starts at `e`. Anything else — written bytes after
/// the zeros, or a next segment that does not continue at `e` — is judged like any damaged frame: a
/// power loss can leave `e`'s header unwritten while later frames of its batch persisted, and those
/// must be cut before the next append reuses LSN `e`, or they would be replayed after it.
pub(crate) fn classify_end(
    storage: &dyn Storage,
    seg: &LoadedSegment,
    scanned: &Scanned,
    next_first: Option<Lsn>,
    later: impl FnOnce() -> Result<Vec<LoadedSegment>, WalError>,
) -> Result<SegmentEnd, WalError> {
    let problem = scanned.problem.expect("a scan ends only at a problem");
    let (end, lsn) = (scanned.end, scanned.next_lsn);
    let written_after = non_zero_bytes(&seg.bytes()[end..]) > 0;
    let empty = problem == FrameProblem::Empty && !written_after;
    match next_first {
        None if empty => return Ok(SegmentEnd::Clean),
        Some(first) if first == lsn && empty => return Ok(SegmentEnd::Clean),
        // The next segment holds `e` (or claims records this one holds), so these bytes are no frame
        // of the log's: preallocated space is zeros, and a frame that does not fit moves whole to the
        // next segment. Cutting here would cut records that may have been acknowledged.
        Some(first) if first <= lsn => {
            let reason = format!(
                "{} after the segment's last record, though the next segment starts at LSN {first}",
                problem.describe()
            );
            return Ok(SegmentEnd::Corrupt(reason));
        }
        _ => {}
    }
    let later = later()?;
    if proven_synced(seg, end, lsn, &later) {
        return Ok(SegmentEnd::Corrupt(format!("{}, and later records follow it", problem.describe())));
    }
    // A snapshot at or past `e` was taken from acknowledged records, so `e` was synced.
    if let Some(snapshot) = covering_snapshot(storage, lsn)? {
        return Ok(SegmentEnd::Corrupt(format!("{}, and snapshot {snapshot} covers it", problem.describe())));
    }
    Ok(SegmentEnd::Torn { reason: problem.describe(), later })
}

/// The name of an intact snapshot whose LSN is at least `lsn`, if any. Read only when a tail would be
/// cut, so opening a clean log reads no snapshot twice.
fn covering_snapshot(storage: &dyn Storage, lsn: Lsn) -> Result<Option<String>, WalError> {
    for file in crate::snapshot::list_snapshots(storage)?.into_iter().filter(|f| f.lsn >= lsn) {
        if crate::snapshot::read_snapshot(storage, &file).is_ok() {
            return Ok(Some(file.name));
        }
    }
    Ok(None)
}

/// A segment after the one whose end is being judged. One whose header never became durable and
/// that holds no frame proving otherwise (a segment created, preallocated, and caught by the crash
/// before its first sync) is read as it is, to be cut with the torn tail; any other damage is an error.
pub(crate) fn load_later(
    storage: &dyn Storage,
    name: &str,
    name_lsn: Lsn,
) -> Result<LoadedSegment, WalError> {
    match load(storage, name) {
        Err(WalError::Corrupt { offset: 0, .. }) if !header_proven_synced(storage, name, name_lsn)? => {
            let mut seg = read_segment(storage, name)?;
            seg.first_lsn = name_lsn;
            Ok(seg)
        }
        other => other,
    }
}

/// The bytes a cut at `end` of `seg` removes: its written bytes after `end`, and every later segment.
pub(crate) fn tail_bytes(seg: &LoadedSegment, end: usize, later: &[LoadedSegment]) -> u64 {
    non_zero_bytes(&seg.bytes()[end..]) + later.iter().map(|s| s.bytes().len() as u64).sum::<u64>()
}

/// The length of `bytes` without its zero tail. A segment is mostly preallocated zeros, so the tail is
/// skipped a block at a time (a slice comparison, which the library vectorises).
fn non_zero_bytes(bytes: &[u8]) -> u64 {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        if bytes[start..end] != ZEROS[..end - start] {
            break;
        }
        end = start;
    }
    bytes[..end].iter().rposition(|b| *b != 0).map_or(0, |last| last as u64 + 1)
}

/// Reads the whole log, hands every record with an LSN of at least `from` to `visit` in order, cuts a
/// torn tail, and says where appending resumes. With no segment at all, the log is empty.
pub(crate) fn recover(
    storage: &dyn Storage,
    from: Lsn,
    visit: &mut Visit<'_>,
) -> Result<(Recovery, Option<(LoadedSegment, usize)>), WalError> {
    let names = segment_names(storage)?;
    let first_lsn = names.first().map_or(1, |(lsn, _)| *lsn);
    let mut recovery =
        Recovery { next_lsn: first_lsn, first_lsn, records: 0, segments: names.len(), torn: None };
    let mut tail = None;
    for (k, (name_lsn, name)) in names.iter().enumerate() {
        let last = k + 1 == names.len();
        let seg = match load(storage, name) {
            // A header is synced with the first batch written after it; a last segment whose header
            // did not survive, and that holds no record proving it was synced, was being created
            // when the crash came.
            Err(WalError::Corrupt { offset: 0, .. })
                if last
                    && *name_lsn == recovery.next_lsn
                    && !header_proven_synced(storage, name, *name_lsn)? =>
            {
                storage.remove(name).map_err(|e| WalError::io("remove", name, e))?;
                storage.sync_dir().map_err(|e| WalError::io("sync", "the log directory", e))?;
                recovery.segments -= 1;
                let reason = "segment header never became durable";
                let lsn = recovery.next_lsn;
                recovery.torn = Some(TornTail { file: name.clone(), offset: 0, lsn, bytes: 0, reason });
                break;
            }
            Err(WalError::Corrupt { offset: 0, reason, .. }) if last && *name_lsn == recovery.next_lsn => {
                return Err(WalError::Corrupt {
                    file: name.clone(),
                    offset: 0,
                    lsn: *name_lsn,
                    reason: format!("{reason}, over records that prove it was synced"),
                })
            }
            other => other?,
        };
        if seg.first_lsn != recovery.next_lsn {
            return Err(WalError::Corrupt {
                file: name.clone(),
                offset: 0,
                lsn: recovery.next_lsn,
                reason: format!(
                    "segment starts at LSN {}, the log needs {} next",
                    seg.first_lsn, recovery.next_lsn
                ),
            });
        }
        let scanned = scan_segment(&seg, from, visit)?;
        recovery.records += scanned.next_lsn - seg.first_lsn;
        recovery.next_lsn = scanned.next_lsn;
        let next_first = names.get(k + 1).map(|(lsn, _)| *lsn);
        let later = || names[k + 1..].iter().map(|(lsn, n)| load_later(storage, n, *lsn)).collect();
        match classify_end(storage, &seg, &scanned, next_first, later)? {
            SegmentEnd::Clean => {}
            SegmentEnd::Corrupt(reason) => {
                let (file, offset, lsn) = (name.clone(), scanned.end as u64, scanned.next_lsn);
                return Err(WalError::Corrupt { file, offset, lsn, reason });
            }
            SegmentEnd::Torn { reason, later } => {
                let removed = tail_bytes(&seg, scanned.end, &later);
                cut_tail(storage, &seg, scanned.end, &later)?;
                recovery.segments = k + 1;
                if removed > 0 {
                    let (file, offset, lsn) = (name.clone(), scanned.end as u64, scanned.next_lsn);
                    recovery.torn = Some(TornTail { file, offset, lsn, bytes: removed, reason });
                }
                return Ok((recovery, Some((seg, scanned.end))));
            }
        }
        if last {
            tail = Some((seg, scanned.end));
        }
    }
    Ok((recovery, tail))
}

/// Zeroes a segment from `end`, removes the segments after it, and makes both durable.
fn cut_tail(
    storage: &dyn Storage,
    seg: &LoadedSegment,
    end: usize,
    later: &[LoadedSegment],
) -> Result<(), WalError> {
    let file = storage.open(&seg.name).map_err(|e| WalError::io("open", &seg.name, e))?;
    let io = |op, e| WalError::io(op, &seg.name, e);
    file.set_len(end as u64).map_err(|e| io("truncate", e))?;
    file.allocate(seg.capacity.max(end as u64)).map_err(|e| io("allocate", e))?;
    file.sync_data().map_err(|e| io("sync", e))?;
    for s in later {
        storage.remove(&s.name).map_err(|e| WalError::io("remove", &s.name, e))?;
    }
    if !later.is_empty() {
        storage.sync_dir().map_err(|e| WalError::io("sync", "the log directory", e))?;
    }
    Ok(())
}

/// Hands every acknowledged record with an LSN in `from..=to` to `visit`, reading segments as they are
/// on disk and changing nothing: safe while the log is being written (`to` must not exceed the
/// acknowledged LSN, whose records are complete on disk).
pub fn read_range(storage: &dyn Storage, from: Lsn, to: Lsn, visit: &mut Visit<'_>) -> Result<(), WalError> {
    let names = segment_names(storage)?;
    for (i, (first, name)) in names.iter().enumerate() {
        let next_first = names.get(i + 1).map(|(lsn, _)| *lsn);
        if next_first.is_some_and(|next| next <= from) || *first > to {
            continue;
        }
        let seg = load(storage, name)?;
        let bytes = seg.bytes();
        let (mut lsn, mut pos) = (seg.first_lsn, SEGMENT_HEADER_BYTES as usize);
        while lsn <= to {
            let frame = match decode_frame(&bytes[pos..]) {
                Ok(frame) if frame.lsn == lsn => frame,
                // The segment's records end here: the next segment continues (or `to` was reached).
                Err(FrameProblem::Empty) if next_first == Some(lsn) => break,
                _ => {
                    let reason = "record missing or damaged below the acknowledged LSN".to_owned();
                    return Err(WalError::Corrupt { file: name.clone(), offset: pos as u64, lsn, reason });
                }
            };
            if lsn >= from {
                visit(lsn, frame.payload).map_err(|reason| WalError::Replay { lsn, reason })?;
            }
            lsn += 1;
            pos += frame.bytes;
        }
    }
    Ok(())
}
