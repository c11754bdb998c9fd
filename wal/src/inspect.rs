//! Examining a log without changing it, for the operator's tools: every segment read and every frame
//! checked, each problem named by file, offset and LSN, and classified by the rule recovery applies (a
//! torn tail recovery would cut, or corruption that stops it). Scanning goes on past corruption, so
//! one run lists every damaged place. Nothing is written: it is safe on a directory a live server is
//! appending to (its batch being written may then show as a torn tail).
//!
//! [`repair`] is the one writer here: it cuts a torn tail exactly as opening the log would, and
//! refuses (changing nothing) when there is corruption instead.

use crate::error::WalError;
use crate::format::Lsn;
use crate::recover::{
    self, classify_end, header_proven_synced, load, scan_frames, segment_names, tail_bytes, SegmentEnd,
};
use crate::storage::Storage;
use crate::{Recovery, TornTail};

/// One segment file as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub name: String,
    /// The LSN its header (or, if the header is unreadable, its name) says it starts at.
    pub first_lsn: Lsn,
    /// Valid records in it, from `first_lsn` on.
    pub records: u64,
    /// Where its valid records end; the file's size (preallocated) is `file_bytes`.
    pub end_offset: u64,
    pub file_bytes: u64,
}

/// Damage found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogProblem {
    /// An unacknowledged batch cut short by a crash; recovery (or `repair`) removes it.
    Torn(TornTail),
    /// Damage before the tail, or a missing piece: recovery refuses to start.
    Corrupt { file: String, offset: u64, lsn: Lsn, reason: String },
}

/// What an inspection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub segments: Vec<SegmentReport>,
    /// The first LSN in the log, and the one after the last valid record.
    pub first_lsn: Lsn,
    pub next_lsn: Lsn,
    /// Valid records, all segments together.
    pub records: u64,
    pub problems: Vec<LogProblem>,
}

impl Inspection {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
    pub fn is_corrupt(&self) -> bool {
        self.problems.iter().any(|p| matches!(p, LogProblem::Corrupt { .. }))
    }
}

/// One valid record and where it is.
pub struct RecordAt<'a> {
    pub lsn: Lsn,
    pub file: &'a str,
    pub offset: u64,
    pub payload: &'a [u8],
}

/// Receives each valid record of an inspection.
pub type RecordVisit<'a> = dyn FnMut(RecordAt<'_>) -> Result<(), String> + 'a;

/// Reads the segments of the log in `storage` that may hold LSNs of `from` or later (segments wholly
/// before it are skipped: pass 1 for the whole log), hands each valid record of those segments to
/// `visit` in order (an `Err` from it stops the inspection with `WalError::Replay`), and reports every
/// segment read and every problem in them.
pub fn inspect(
    storage: &dyn Storage,
    from: Lsn,
    visit: &mut RecordVisit<'_>,
) -> Result<Inspection, WalError> {
    let mut names = segment_names(storage)?;
    let skip = names.iter().skip(1).take_while(|(next_first, _)| *next_first <= from).count();
    names.drain(..skip);
    let first_lsn = names.first().map_or(1, |(lsn, _)| *lsn);
    let mut out =
        Inspection { segments: Vec::new(), first_lsn, next_lsn: first_lsn, records: 0, problems: Vec::new() };
    let mut expected = first_lsn;
    for (k, (name_lsn, name)) in names.iter().enumerate() {
        let last = k + 1 == names.len();
        let seg = match load(storage, name) {
            Ok(seg) => seg,
            Err(WalError::Corrupt { offset, reason, .. }) => {
                let file_bytes = storage.open(name).and_then(|f| f.size()).unwrap_or(0);
                out.segments.push(SegmentReport {
                    name: name.clone(),
                    first_lsn: *name_lsn,
                    records: 0,
                    end_offset: 0,
                    file_bytes,
                });
                if last && *name_lsn == expected && !header_proven_synced(storage, name, *name_lsn)? {
                    let reason = "segment header never became durable";
                    out.problems.push(LogProblem::Torn(TornTail {
                        file: name.clone(),
                        offset,
                        lsn: expected,
                        bytes: 0,
                        reason,
                    }));
                } else {
                    out.problems.push(LogProblem::Corrupt {
                        file: name.clone(),
                        offset,
                        lsn: *name_lsn,
                        reason,
                    });
                }
                expected = names.get(k + 1).map_or(expected, |(lsn, _)| *lsn);
                continue;
            }
            Err(e) => return Err(e),
        };
        if seg.first_lsn != expected {
            let reason = if seg.first_lsn > expected {
                format!("records {expected}..={} are missing (a segment is gone?)", seg.first_lsn - 1)
            } else {
                format!("segment starts at LSN {}, but the log is already at {expected}", seg.first_lsn)
            };
            out.problems.push(LogProblem::Corrupt { file: name.clone(), offset: 0, lsn: expected, reason });
        }
        let scanned = scan_frames(&seg, &mut |lsn, offset, payload| {
            let at = RecordAt { lsn, file: name, offset: offset as u64, payload };
            visit(at).map_err(|reason| WalError::Replay { lsn, reason })
        })?;
        let records = scanned.next_lsn - seg.first_lsn;
        out.records += records;
        out.segments.push(SegmentReport {
            name: name.clone(),
            first_lsn: seg.first_lsn,
            records,
            end_offset: scanned.end as u64,
            file_bytes: seg.bytes().len() as u64,
        });
        expected = scanned.next_lsn;
        out.next_lsn = scanned.next_lsn;
        let next_first = names.get(k + 1).map(|(lsn, _)| *lsn);
        // Inspection goes on past a later segment it cannot load; recovery would stop there.
        let later = || {
            let loaded =
                names[k + 1..].iter().filter_map(|(lsn, n)| recover::load_later(storage, n, *lsn).ok());
            Ok(loaded.collect())
        };
        let (file, offset, lsn) = (name.clone(), scanned.end as u64, scanned.next_lsn);
        match classify_end(storage, &seg, &scanned, next_first, later)? {
            SegmentEnd::Clean => {}
            SegmentEnd::Corrupt(reason) => {
                out.problems.push(LogProblem::Corrupt { file, offset, lsn, reason })
            }
            SegmentEnd::Torn { reason, later } => {
                // As recovery: a tail of nothing but zeros is no tear.
                let bytes = tail_bytes(&seg, scanned.end, &later);
                if bytes > 0 {
                    out.problems.push(LogProblem::Torn(TornTail { file, offset, lsn, bytes, reason }));
                }
                break; // later segments belong to the torn tail
            }
        }
    }
    Ok(out)
}

/// Cuts a torn tail as opening the log would, and syncs the cut; with corruption it returns the error
/// and changes nothing. Must not run while a server has the log open.
pub fn repair(storage: &dyn Storage) -> Result<Recovery, WalError> {
    recover::recover(storage, Lsn::MAX, &mut |_, _| Ok(())).map(|(recovery, _)| recovery)
}
