//! One run at a time: the lock file beside the ledger, named from its real path.
//!
//! The lock is the OS's (`flock` on Unix, `LockFileEx` on Windows), so it goes with the
//! process however it dies. The holder writes its pid into the file for the message the
//! next run shows. On Windows a lock is mandatory, so another process could not read a
//! locked byte: the lock there covers one byte far past the end of the file, never the pid.

use super::*;

/// The ledger's one name: symlinks to the file or to a folder on its way, `..` and a
/// relative start all resolved. The lock, the log and the journals are named from it, so
/// two names of one ledger meet at one lock. A ledger not yet created is named from its
/// real folder.
pub(super) fn real_path(ledger: &Path) -> PathBuf {
    // dunce: on Windows a plain `C:\...` when one names the file (std gives `\\?\C:\...`,
    // which every message would show); std's own answer elsewhere.
    if let Ok(real) = dunce::canonicalize(ledger) {
        return real;
    }
    match (ledger.parent(), ledger.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            dunce::canonicalize(dir)
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
    match try_lock(&file) {
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

#[cfg(not(windows))]
fn try_lock(file: &File) -> Result<(), std::fs::TryLockError> {
    file.try_lock()
}

/// An exclusive lock on the byte at 2^63 - 1, past any end the file will have: Windows
/// allows it, and the pid at the start stays readable by the run that is refused.
#[cfg(windows)]
fn try_lock(file: &File) -> Result<(), std::fs::TryLockError> {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::{ERROR_IO_PENDING, ERROR_LOCK_VIOLATION};
    use windows_sys::Win32::Storage::FileSystem::{
        LockFileEx, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
    };
    use windows_sys::Win32::System::IO::OVERLAPPED;
    // SAFETY: a plain C struct, all zeroes is its empty value.
    let mut at: OVERLAPPED = unsafe { std::mem::zeroed() };
    at.Anonymous.Anonymous.Offset = u32::MAX;
    at.Anonymous.Anonymous.OffsetHigh = i32::MAX as u32;
    let flags = LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY;
    // SAFETY: the handle is open for as long as `file` lives; `at` outlives the call,
    // which on a synchronous handle returns only once it is decided.
    if unsafe { LockFileEx(file.as_raw_handle(), flags, 0, 1, 0, &mut at) } != 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error().map(|c| c as u32) {
        Some(ERROR_LOCK_VIOLATION | ERROR_IO_PENDING) => Err(std::fs::TryLockError::WouldBlock),
        _ => Err(std::fs::TryLockError::Error(e)),
    }
}
