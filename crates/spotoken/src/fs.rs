//! Files that hold secrets: directories 0700, files 0600, created that way from
//! the start (never chmod-ed after the fact, when a secret may already be there).

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::Error;

/// Creates `dir` (and parents) with mode 0700, and tightens it if it exists.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |e: std::io::Error| {
        Error::Configuration(format!(
            "cannot create the directory {}: {e}",
            dir.display()
        ))
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let meta = std::fs::metadata(dir).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Creates (or truncates) a file with mode 0600.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Creates a file with mode 0600 if it does not exist (without truncating).
pub fn touch_private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// fsyncs the directory holding `path`, so a rename into it is durable.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}
