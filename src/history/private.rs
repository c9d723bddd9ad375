//! Private files and folders: the data folder is readable by its owner only (folders
//! 0700, files 0600), whatever the process's umask.
//!
//! The modes are given at creation, so no other user can ever open what is created, not
//! even for a moment: a umask only clears bits, so it can make these modes stricter but
//! never looser. What someone else created (sled's own files) is tightened afterwards
//! with [`restrict_tree`]; it sits inside a 0700 folder, so it is unreachable meanwhile.
//!
//! Other modules (blobs, workspaces) can reuse these helpers for their own files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every folder of the data folder.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file of the data folder.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with mode 0700. A folder that already exists
/// is left as it is (see [`restrict`] to tighten it).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Options that create a file with mode 0600 (add `read`, `write`, `create_new` and
/// so on as needed).
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or opens, if it exists) `path` for reading and writing, mode 0600 when new.
pub fn create_file(path: &Path) -> io::Result<File> {
    file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Sets `path` to 0700 (a folder) or 0600 (a file) when it allows more; symbolic links
/// are left alone. Returns whether the mode changed.
pub fn restrict(path: &Path) -> io::Result<bool> {
    let meta = std::fs::symlink_metadata(path)?;
    let wanted = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(false);
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !wanted == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & wanted))?;
    Ok(true)
}

/// [`restrict`] on `dir` and everything below it.
pub fn restrict_tree(dir: &Path) -> io::Result<()> {
    restrict(dir)?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            restrict_tree(&entry?.path())?;
        }
    }
    Ok(())
}
