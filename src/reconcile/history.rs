//! Telling this log's history from another. Postgres keeps, with its checkpoint, the digest of the
//! record at `applied_lsn`; before applying anything the mirror checks that this log holds the same
//! record there. A data directory restored from a backup grows past that LSN with records of its own,
//! and LSNs alone would not tell.
//!
//! The log may have let that record go (it outgrew its budget while Postgres was away). So the mirror
//! also keeps, beside the log, an anchor: the digest this log's record had at the last checkpoint it
//! saw. Where neither holds the record, the mirror does not guess: it refuses, as for another history.

use crate::durable::Durable;
use holdfast_wal::storage::Storage;
use holdfast_wal::Lsn;

/// The anchor file, beside the log's segments: `LSN DIGEST` in decimal.
const ANCHOR: &str = "mirror.anchor";

/// A record's digest, as the checkpoint keeps it.
pub fn digest_of(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

/// The digest of the record at `lsn`, if the log holds it.
pub fn record_digest(storage: &dyn Storage, lsn: Lsn) -> Option<u64> {
    let mut found = None;
    holdfast_wal::read_range(storage, lsn, lsn, &mut |at, payload| {
        if at == lsn {
            found = Some(digest_of(payload));
        }
        Ok(())
    })
    .ok()?;
    found
}

/// Writes the anchor for the record at `lsn`, if the log holds it (atomically: a new file renamed).
pub fn write_anchor(storage: &dyn Storage, lsn: Lsn) -> std::io::Result<()> {
    let Some(digest) = record_digest(storage, lsn) else { return Ok(()) };
    let temp = format!("{ANCHOR}.new");
    let _ = storage.remove(&temp);
    let file = storage.create(&temp)?;
    file.write_all_at(format!("{lsn} {digest}\n").as_bytes(), 0)?;
    file.sync_data()?;
    storage.rename(&temp, ANCHOR)?;
    storage.sync_dir()
}

fn read_anchor(storage: &dyn Storage) -> Option<(Lsn, u64)> {
    let file = storage.open(ANCHOR).ok()?;
    let mut buf = vec![0u8; file.size().ok()?.min(64) as usize];
    holdfast_wal::storage::read_exact_at(&*file, &mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf).ok()?;
    let (lsn, digest) = text.trim().split_once(' ')?;
    Some((lsn.parse().ok()?, digest.parse().ok()?))
}

/// Whether Postgres, at `applied` with the record digest `digest`, followed this log's history: the
/// log must reach `applied`, and its record there (or the anchor's) must be the one Postgres applied.
pub fn same_history(durable: &Durable, applied: Lsn, digest: Option<u64>) -> Result<(), String> {
    let appended = durable.wal().appended_lsn();
    if applied > appended {
        return Err(format!(
            "Postgres has applied up to LSN {applied} but the log ends at {appended}: the data directory is \
             older than the database (restored from a backup?)"
        ));
    }
    // LSN 0 names no record (a new generation starts there).
    let Some(want) = digest.filter(|_| applied > 0) else { return Ok(()) };
    let storage = &**durable.wal().storage();
    let found = record_digest(storage, applied)
        .or_else(|| read_anchor(storage).and_then(|(lsn, digest)| (lsn == applied).then_some(digest)));
    match found {
        Some(got) if got == want => Ok(()),
        Some(_) => Err(format!(
            "the log's record at LSN {applied} is not the one Postgres applied there: the data directory \
             follows another history than the database (restored from a backup and written to since?)"
        )),
        None => Err(format!(
            "the log no longer holds the record at LSN {applied} that Postgres applied last, and its anchor \
             does not vouch for it: the data directory may follow another history than the database"
        )),
    }
}
