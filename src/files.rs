//! Files the run leaves (results, report, metrics): written beside their final name and
//! renamed over it once complete and on disk, so a reader never sees half a file and a
//! power cut leaves the old one or the new one, never an empty one.
//!
//! On Windows the same holds on NTFS: the temporary file is flushed through a handle with
//! write access (`FlushFileBuffers` refuses any other), and the rename (`MoveFileExW`) is a
//! metadata change NTFS writes to its log as one unit. Neither platform's folder is
//! flushed here: the rename itself may be undone by a power cut soon after, leaving the
//! old file, which the ledger (the source of truth) can render again (`export`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `out` with what `write` writes; `what` names it in errors. `mode` is the
/// file's Unix permission bits: 0o600 for what holds customers' details.
pub fn replace_atomically(
    out: &Path,
    what: &str,
    mode: u32,
    write: impl FnOnce(&mut (dyn Write + Send)) -> Result<()>,
) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".invoice-dispatch-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| {
            format!(
                "cannot write {what} {} (in {})",
                out.display(),
                dir.display()
            )
        })?;
    {
        let mut file = std::io::BufWriter::new(temp.as_file_mut());
        write(&mut file)?;
        file.flush()?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    // A folder's permissions (the user's own profile) guard it on Windows.
    #[cfg(not(unix))]
    let _ = mode;
    temp.as_file().sync_all()?;
    if let Err(e) = temp.persist(out) {
        let hint = if cfg!(windows) && e.error.kind() == std::io::ErrorKind::PermissionDenied {
            " (is it open in another program? Excel keeps the files it shows locked)"
        } else {
            ""
        };
        return Err(anyhow::Error::from(e.error))
            .with_context(|| format!("cannot replace {what} {}{hint}", out.display()));
    }
    Ok(())
}
