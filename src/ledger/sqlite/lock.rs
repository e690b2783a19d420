//! One run at a time: the lock file beside the ledger, named from its real path.

use super::*;

/// The ledger's one name: symlinks to the file or to a folder on its way, `..` and a
/// relative start all resolved. The lock, the log and the journals are named from it, so
/// two names of one ledger meet at one lock. A ledger not yet created is named from its
/// real folder.
pub(super) fn real_path(ledger: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(ledger) {
        return real;
    }
    match (ledger.parent(), ledger.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| ledger.to_path_buf())
        }
        _ => ledger.to_path_buf(),
    }
}

/// Takes the exclusive run lock beside the ledger (named by [`real_path`]), naming the
/// holder when it is taken.
pub(super) fn take_lock(ledger: &Path) -> Result<File> {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open the ledger lock {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            bail!(
                "ledger {} is in use by another invoice-dispatch run ({}); wait for it to finish, or use another --ledger",
                ledger.display(),
                if holder.is_empty() { "pid unknown".to_string() } else { format!("pid {holder}") }
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}
