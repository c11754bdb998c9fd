//! Snapshot files: an opaque payload (the caller's state) as of an LSN, written atomically — temporary
//! file, write, sync, rename, directory sync — and checked when read. See `FORMAT.md`.

use crate::error::WalError;
use crate::format::Lsn;
use crate::storage::{read_exact_at, Storage};

const MAGIC: [u8; 8] = *b"HFSNAPSH";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;

/// A snapshot file, as named in the directory. Its content is checked only when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub name: String,
    /// The state in the snapshot includes every record up to and including this LSN.
    pub lsn: Lsn,
}

pub fn snapshot_name(lsn: Lsn) -> String {
    format!("{lsn:020}.snap")
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Snapshots in the directory, newest first.
pub fn list_snapshots(storage: &dyn Storage) -> Result<Vec<SnapshotFile>, WalError> {
    let names = storage.list().map_err(|e| WalError::io("listing", "the data directory", e))?;
    let mut found: Vec<SnapshotFile> = names
        .into_iter()
        .filter_map(|name| parse_name(&name).map(|lsn| SnapshotFile { name, lsn }))
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse(s.lsn));
    Ok(found)
}

/// Writes a snapshot of the state as of `lsn`. When this returns, the snapshot is durable.
pub fn write_snapshot(storage: &dyn Storage, lsn: Lsn, payload: &[u8]) -> Result<SnapshotFile, WalError> {
    let name = snapshot_name(lsn);
    let temp = format!("{name}.tmp");
    let _ = storage.remove(&temp); // a leftover from a crash mid-write
    let file = storage.create(&temp).map_err(|e| WalError::io("create", &temp, e))?;
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
    header[16..24].copy_from_slice(&lsn.to_le_bytes());
    header[24..32].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[32..36].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let crc = crc32c::crc32c(&header[0..60]);
    header[60..64].copy_from_slice(&crc.to_le_bytes());
    let io = |op, e| WalError::io(op, &temp, e);
    file.write_all_at(&header, 0).map_err(|e| io("write", e))?;
    file.write_all_at(payload, HEADER_BYTES as u64).map_err(|e| io("write", e))?;
    file.sync_data().map_err(|e| io("sync", e))?;
    storage.rename(&temp, &name).map_err(|e| WalError::io("rename", &temp, e))?;
    storage.sync_dir().map_err(|e| WalError::io("sync", "the data directory", e))?;
    Ok(SnapshotFile { name, lsn })
}

/// A snapshot's payload, 16-byte aligned.
pub struct SnapshotPayload {
    words: Vec<u128>,
    len: usize,
}

impl SnapshotPayload {
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

/// Reads a snapshot and checks its header and checksum; a damaged one is `Corrupt`, naming the file.
pub fn read_snapshot(storage: &dyn Storage, snapshot: &SnapshotFile) -> Result<SnapshotPayload, WalError> {
    let name = &snapshot.name;
    let corrupt = |offset: u64, reason: &str| WalError::Corrupt {
        file: name.clone(),
        offset,
        lsn: snapshot.lsn,
        reason: reason.to_owned(),
    };
    let file = storage.open(name).map_err(|e| WalError::io("open", name, e))?;
    let mut header = [0u8; HEADER_BYTES];
    read_exact_at(&*file, &mut header, 0).map_err(|_| corrupt(0, "snapshot shorter than its header"))?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if header[0..8] != MAGIC {
        return Err(corrupt(0, "not a holdfast snapshot (bad magic)"));
    }
    if u32_at(60) != crc32c::crc32c(&header[0..60]) {
        return Err(corrupt(0, "snapshot header checksum mismatch"));
    }
    if u32_at(8) != VERSION || u32_at(12) as usize != HEADER_BYTES {
        return Err(corrupt(8, "unsupported snapshot version"));
    }
    if u64_at(16) != snapshot.lsn {
        return Err(corrupt(16, "snapshot LSN does not match its file name"));
    }
    let len = usize::try_from(u64_at(24)).map_err(|_| corrupt(24, "snapshot length out of range"))?;
    let size = file.size().map_err(|e| WalError::io("stat", name, e))?;
    if size != (HEADER_BYTES + len) as u64 {
        return Err(corrupt(24, "snapshot length does not match the file"));
    }
    let mut words = vec![0u128; len.div_ceil(16)];
    let payload = &mut bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..len];
    read_exact_at(&*file, payload, HEADER_BYTES as u64).map_err(|e| WalError::io("read", name, e))?;
    if crc32c::crc32c(payload) != u32_at(32) {
        return Err(corrupt(HEADER_BYTES as u64, "snapshot payload checksum mismatch"));
    }
    Ok(SnapshotPayload { words, len })
}

/// Removes a snapshot (retention), durably.
pub fn remove_snapshot(storage: &dyn Storage, snapshot: &SnapshotFile) -> Result<(), WalError> {
    storage.remove(&snapshot.name).map_err(|e| WalError::io("remove", &snapshot.name, e))?;
    storage.sync_dir().map_err(|e| WalError::io("sync", "the data directory", e))
}
