//! The I/O seam: a directory of files, as the log needs it. `FsStorage` is the real one; `MemStorage`
//! is a disk in memory that remembers what was synced, so a test can crash it (losing or tearing what
//! was not) and can make a chosen operation fail.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of files. Names are plain file names, no separators.
pub trait Storage: Send + Sync + 'static {
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
}

pub trait StorageFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks up to `len` (zero-filled), so that writes within them cannot fail for space.
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn StorageFile, buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                done += n;
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// A real directory.
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    /// Uses `dir`, creating it (and its parents) if needed. Records hold other systems' user ids and
    /// keys: the directory is created owner-only, and so is every file in it.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.as_ref())?;
        Ok(Self { dir: dir.as_ref().to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

struct FsFile(File);

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // Filesystems without fallocate: extend the file; space is then found at write time.
            Err(rustix::io::Errno::OPNOTSUPP) => self.0.set_len(len.max(self.size()?)),
            Err(e) => Err(e.into()),
        }
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.extend(entry.file_name().to_str().map(str::to_owned));
            }
        }
        names.sort();
        Ok(names)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(name))?;
        Ok(Box::new(FsFile(file)))
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(self.dir.join(name))?;
        Ok(Box::new(FsFile(file)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// How a crash treats what was written but not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Everything unsynced is lost.
    LoseUnsynced,
    /// Each file keeps its unsynced bytes up to a cut point chosen from the seed; the byte at the cut
    /// is garbled (a write torn mid-sector).
    Tear { seed: u64 },
    /// Each 512-byte sector of unsynced data independently survives or not, as pages written back out
    /// of order would.
    Scramble { seed: u64 },
}

/// What an injected fault makes an operation return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// EIO.
    Io,
    /// ENOSPC.
    NoSpace,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::Io => io::Error::from_raw_os_error(5),
            Fault::NoSpace => io::Error::from_raw_os_error(28),
        }
    }
}

/// Which operations a fault may strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Any,
    Write,
    Sync,
    Allocate,
}

#[derive(Default)]
struct MemFileData {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct MemFile(Mutex<MemFileData>);

#[derive(Default)]
struct MemState {
    /// The directory as the process sees it.
    files: BTreeMap<String, Arc<MemFile>>,
    /// The directory as a crash would leave it: as of the last `sync_dir`.
    durable_files: BTreeMap<String, Arc<MemFile>>,
    /// Operations performed so far (every call counts), for "crash after operation N" tests.
    ops: u64,
    /// Fail operations of this kind from operation number `.0` on (inclusive), with `.2`.
    fault: Option<(u64, Op, Fault)>,
}

/// A disk in memory that loses what was not synced when it crashes. Clones share the disk.
#[derive(Clone, Default)]
pub struct MemStorage(Arc<Mutex<MemState>>);

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.0.lock().ops
    }

    /// From the `after`-th operation counted from now (0: the next), every operation of kind `op` fails
    /// with `fault`, until `clear_fault`.
    pub fn fail_from(&self, after: u64, op: Op, fault: Fault) {
        let mut s = self.0.lock();
        s.fault = Some((s.ops + after, op, fault));
    }

    pub fn clear_fault(&self) {
        self.0.lock().fault = None;
    }

    /// The disk after a power loss: a separate storage holding what survived.
    pub fn crash(&self, how: Crash) -> MemStorage {
        let s = self.0.lock();
        let mut rng = match how {
            Crash::LoseUnsynced => 0,
            Crash::Tear { seed } | Crash::Scramble { seed } => seed | 1,
        };
        let mut files = BTreeMap::new();
        for (name, file) in &s.durable_files {
            let data = file.0.lock();
            let survived = survive(&data.durable, &data.current, how, &mut rng);
            let copy = MemFileData { current: survived.clone(), durable: survived };
            files.insert(name.clone(), Arc::new(MemFile(Mutex::new(copy))));
        }
        let state = MemState { durable_files: files.clone(), files, ops: 0, fault: None };
        MemStorage(Arc::new(Mutex::new(state)))
    }

    /// Reads a whole file as the process sees it (tests).
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        Some(self.0.lock().files.get(name)?.0.lock().current.clone())
    }

    /// Overwrites bytes of a file, durably, as a bit rot or a stray write would (tests).
    pub fn corrupt(&self, name: &str, offset: usize, bytes: &[u8]) {
        let s = self.0.lock();
        let mut guard = s.files.get(name).expect("file exists").0.lock();
        let data = &mut *guard;
        let end = offset + bytes.len();
        for d in [&mut data.current, &mut data.durable] {
            if d.len() < end {
                d.resize(end, 0);
            }
            d[offset..end].copy_from_slice(bytes);
        }
    }

    fn op(&self, kind: Op) -> io::Result<()> {
        let mut s = self.0.lock();
        let n = s.ops;
        s.ops += 1;
        match s.fault {
            Some((from, op, fault)) if n >= from && (op == Op::Any || op == kind) => Err(fault.error()),
            _ => Ok(()),
        }
    }

    fn file(&self, name: &str) -> io::Result<Arc<MemFile>> {
        self.0.lock().files.get(name).cloned().ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

fn next_random(rng: &mut u64) -> u64 {
    // xorshift64*: enough to pick cut points reproducibly from a seed.
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// The unit a disk writes whole or not at all.
const SECTOR_BYTES: usize = 512;

/// What survives of a file's content after a crash.
fn survive(durable: &[u8], current: &[u8], how: Crash, rng: &mut u64) -> Vec<u8> {
    let first_diff =
        durable.iter().zip(current).position(|(a, b)| a != b).unwrap_or(durable.len().min(current.len()));
    let mut out = durable.to_vec();
    if current.len() <= first_diff {
        return out;
    }
    out.resize(out.len().max(current.len()), 0);
    let dirty = &current[first_diff..];
    match how {
        Crash::LoseUnsynced => return durable.to_vec(),
        Crash::Tear { .. } => {
            let cut = (next_random(rng) % (dirty.len() as u64 + 1)) as usize;
            out[first_diff..first_diff + cut].copy_from_slice(&dirty[..cut]);
            if cut < dirty.len() {
                out[first_diff + cut] = dirty[cut] ^ 0x5a;
            }
        }
        Crash::Scramble { .. } => {
            // Sectors on the disk's own boundaries: the one holding the first unsynced byte can be
            // lost while later ones survive, leaving a frame's header unwritten behind frames of its
            // batch that did reach the disk.
            let mut at = first_diff - first_diff % SECTOR_BYTES;
            while at < current.len() {
                let end = (at + SECTOR_BYTES).min(current.len());
                if next_random(rng).is_multiple_of(2) {
                    out[at..end].copy_from_slice(&current[at..end]);
                }
                at = end;
            }
        }
    }
    out
}

struct MemHandle {
    storage: MemStorage,
    file: Arc<MemFile>,
}

impl StorageFile for MemHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.file.0.lock();
        let start = (offset as usize).min(data.current.len());
        let n = buf.len().min(data.current.len() - start);
        buf[..n].copy_from_slice(&data.current[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.storage.op(Op::Write)?;
        let mut data = self.file.0.lock();
        let end = offset as usize + buf.len();
        if data.current.len() < end {
            data.current.resize(end, 0);
        }
        data.current[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.storage.op(Op::Sync)?;
        let mut data = self.file.0.lock();
        data.durable = data.current.clone();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.0.lock().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.storage.op(Op::Write)?;
        self.file.0.lock().current.resize(len as usize, 0);
        Ok(())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.storage.op(Op::Allocate)?;
        let mut data = self.file.0.lock();
        if (data.current.len() as u64) < len {
            data.current.resize(len as usize, 0);
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.0.lock().files.keys().cloned().collect())
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.op(Op::Write)?;
        let mut s = self.0.lock();
        if s.files.contains_key(name) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let file = Arc::new(MemFile::default());
        s.files.insert(name.to_owned(), file.clone());
        Ok(Box::new(MemHandle { storage: self.clone(), file }))
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(MemHandle { storage: self.clone(), file: self.file(name)? }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.op(Op::Write)?;
        self.0.lock().files.remove(name).map(drop).ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.op(Op::Write)?;
        let mut s = self.0.lock();
        let file = s.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.files.insert(to.to_owned(), file);
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.op(Op::Sync)?;
        let mut s = self.0.lock();
        s.durable_files = s.files.clone();
        Ok(())
    }
}
