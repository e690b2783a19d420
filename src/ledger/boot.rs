//! The machine's boot id: a change means the machine restarted (or is another machine)
//! since, so journal writes that reached the OS but not the disk may be gone.
//!
//! - Linux: `/proc/sys/kernel/random/boot_id`, a random UUID per boot.
//! - Windows has no such id. Its boot is identified by when it happened: now minus
//!   `GetTickCount64` (milliseconds since boot, sleep and hibernation included), with the
//!   machine's name, since machines powered on together boot within a second. The two
//!   clocks are read a few milliseconds apart and drift against each other (an
//!   undisciplined tick runs tens of ppm off the wall clock, which NTP corrects), so two
//!   readings in one boot agree only roughly: they are the same boot within
//!   [`BOOT_TIME_TOLERANCE_MS`]. That is far below any real reboot (the previous boot
//!   lasted at least as long as starting the tool took, plus the new boot), so a reboot
//!   is never taken for the same boot; the price of a small tolerance is the other way:
//!   a run settled more than about half a day after it died (or after the clock was
//!   stepped) may be taken for another boot, and its open rows read `unknown` rather than
//!   trusted to their marks. That direction never sends twice.
//! - macOS: `sysctl kern.boottime`, the kernel's record of its boot (moved only when the
//!   clock is stepped, which again errs toward `unknown`).
//! - Elsewhere: none, and every open row of a dead run is `unknown`.

/// Two Windows boot readings this close (milliseconds) are one boot.
pub const BOOT_TIME_TOLERANCE_MS: i64 = 2_000;

const BOOT_TIME_PREFIX: &str = "boot-time-ms:";

/// This machine's boot id, or the test override (`INVOICE_DISPATCH_TEST_BOOT_ID`).
pub fn boot_id() -> Option<String> {
    if let Ok(id) = std::env::var(crate::domain::TEST_OVERRIDES[1]) {
        return Some(id);
    }
    platform_boot_id().filter(|id| !id.is_empty())
}

/// Whether two recorded boot ids are one boot of one machine. No id is never the same.
pub fn same_boot(a: Option<&str>, b: Option<&str>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    match (boot_time(a), boot_time(b)) {
        (Some((host_a, ms_a)), Some((host_b, ms_b))) => {
            host_a == host_b && (ms_a - ms_b).abs() <= BOOT_TIME_TOLERANCE_MS
        }
        _ => a == b,
    }
}

/// A boot id made from a boot time: the machine's name and the boot's wall-clock
/// milliseconds since the Unix epoch.
#[cfg(any(windows, test))]
fn from_boot_time(host: &str, unix_ms: i64) -> String {
    format!("{BOOT_TIME_PREFIX}{unix_ms}@{host}")
}

fn boot_time(id: &str) -> Option<(&str, i64)> {
    let (ms, host) = id.strip_prefix(BOOT_TIME_PREFIX)?.split_once('@')?;
    Some((host, ms.parse().ok()?))
}

#[cfg(target_os = "linux")]
fn platform_boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

#[cfg(windows)]
fn platform_boot_id() -> Option<String> {
    // SAFETY: no arguments, no failure mode.
    let since_boot = unsafe { windows_sys::Win32::System::SystemInformation::GetTickCount64() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let boot_ms = i64::try_from(now.as_millis()).ok()? - i64::try_from(since_boot).ok()?;
    let host = whoami::fallible::hostname().ok()?;
    Some(from_boot_time(&host, boot_ms))
}

#[cfg(target_os = "macos")]
fn platform_boot_id() -> Option<String> {
    let mut boot = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut size = std::mem::size_of::<libc::timeval>();
    let mut mib = [libc::CTL_KERN, libc::KERN_BOOTTIME];
    // SAFETY: `boot` and `size` describe a buffer of the size sysctl is told.
    let rc = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            2,
            (&mut boot as *mut libc::timeval).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && boot.tv_sec > 0)
        .then(|| format!("macos-boottime:{}.{:06}", boot.tv_sec, boot.tv_usec))
}

#[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
fn platform_boot_id() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_within_the_tolerance_are_one_boot_of_one_machine() {
        let at = |host, ms| from_boot_time(host, ms);
        let same = |a: &str, b: &str| same_boot(Some(a), Some(b));
        let t = 1_780_000_000_000;
        assert!(same(
            &at("pc-1", t),
            &at("pc-1", t + BOOT_TIME_TOLERANCE_MS)
        ));
        assert!(same(&at("pc-1", t), &at("pc-1", t - 15)));
        assert!(!same(
            &at("pc-1", t),
            &at("pc-1", t + BOOT_TIME_TOLERANCE_MS + 1)
        ));
        assert!(!same(&at("pc-1", t), &at("pc-2", t)));
        // A reboot ten seconds after the last one is another boot.
        assert!(!same(&at("pc-1", t), &at("pc-1", t + 10_000)));
    }

    #[test]
    fn other_ids_must_be_equal_and_none_is_never_the_same() {
        let linux = "0f8c1e5a-5b1e-4c8e-9d1e-2f3a4b5c6d7e";
        assert!(same_boot(Some(linux), Some(linux)));
        assert!(!same_boot(Some(linux), Some("another")));
        assert!(!same_boot(None, None));
        assert!(!same_boot(Some(linux), None));
        assert!(!same_boot(
            Some("boot-time-ms:12@pc"),
            Some("boot-time-ms:12@pc-2")
        ));
    }

    #[test]
    #[cfg(any(target_os = "linux", windows, target_os = "macos"))]
    fn this_machine_has_a_boot_id_and_it_is_stable() {
        let (a, b) = (platform_boot_id(), platform_boot_id());
        assert!(a.is_some(), "no boot id on this platform");
        assert!(same_boot(a.as_deref(), b.as_deref()), "{a:?} then {b:?}");
    }
}
