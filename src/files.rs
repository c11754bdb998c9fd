//! Files of a data directory hold user ids, idempotency keys and signing keys: the directory is
//! created owner-only (0700) and every file in it owner-only (0600), whatever the umask.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Creates `dir` and its missing parents, owner-only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates (or truncates) `path` for writing, owner-only.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Refuses a secret file that others than its owner may read or write.
pub fn check_private(path: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is readable or writable by others (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    Ok(())
}

/// Takes the data directory's lock (`DIR/LOCK`, held until the file is dropped): one process at a
/// time appends to a directory's log, whether a server, a tool that writes, or the crash drill.
pub fn lock_data_dir(dir: &Path) -> std::io::Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&path)?;
    file.try_lock().map_err(|_| {
        std::io::Error::other(format!(
            "{} is in use by another holdfast process (it holds {}); stop it first",
            dir.display(),
            path.display()
        ))
    })?;
    Ok(file)
}
