//! Why a boot died before userspace: the kernel's last words, kept across the reset.
//!
//! A new slot whose tries run out never reached userspace, so nothing on the node
//! logged the failure. The kernel's persistent store (pstore; on UEFI machines its
//! `efi_pstore` backend writes EFI variables) keeps the kernel log of a panic, and at
//! the next boot that gets to userspace `systemd-pstore.service` archives each record
//! as `<dir>/<record id>/dmesg.txt`. The engine notes which archives exist when it
//! asks for the reboot into a new slot ([`kept`]); the ones that appear after it are
//! the logs of the boots that died since: the failed tries ([`new_panic`]). No clock
//! is involved, so a wall-clock step cannot hide a reason or name an older one.
//! A dm-verity root opened with `panic-on-corruption` turns a refused block into such
//! a panic. Reading them is diagnostics: a missing or unreadable archive is no reason.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

/// The names of the kernel logs systemd-pstore had archived at some moment (their
/// record ids).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptLogs(pub BTreeSet<String>);

/// One kernel log line as pstore keeps it: `<level>[  seconds] text`.
fn parse(line: &str) -> Option<(u8, f64, &str)> {
    let (level, rest) = line.strip_prefix('<')?.split_once('>')?;
    let (stamp, text) = rest.strip_prefix('[')?.split_once("] ")?;
    Some((level.parse().ok()?, stamp.trim().parse().ok()?, text.trim()))
}

/// The panic in one archived kernel log: the panic message and the last error the
/// kernel logged in the second before it (for dm-verity: which device and block),
/// or `None` when the log holds no panic. An older error is not taken for the cause.
pub fn panic_reason(dmesg: &str) -> Option<String> {
    const PANIC: &str = "Kernel panic - not syncing: ";
    let lines: Vec<&str> = dmesg.lines().collect();
    let at = lines.iter().rposition(|l| l.contains(PANIC))?;
    let (_, what) = lines[at].split_once(PANIC)?;
    let what = what.trim();
    let cause = parse(lines[at]).and_then(|(_, when, _)| {
        lines[..at]
            .iter()
            .rev()
            .filter_map(|l| parse(l))
            .take_while(|(_, t, _)| when - t <= 1.0)
            // Levels 0-3: emergency, alert, critical, error.
            .find(|(level, _, text)| *level <= 3 && !text.is_empty())
            .map(|(_, _, text)| text)
    });
    Some(match cause {
        Some(c) => format!("the kernel panicked: {what} ({c})"),
        None => format!("the kernel panicked: {what}"),
    })
}

/// The archives in `dir` now (none when it is missing or unreadable).
pub fn kept(dir: &Path) -> KeptLogs {
    KeptLogs(
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
    )
}

/// The newest panic among the kernel logs archived in `dir` that are not in
/// `before`, or `None`. Newest by the archive's time, which only orders them.
pub fn new_panic(dir: &Path, before: &KeptLogs) -> Option<String> {
    let mut logs: Vec<(SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if before.0.contains(&name) {
                return None;
            }
            let p = e.path().join("dmesg.txt");
            Some((std::fs::metadata(&p).ok()?.modified().ok()?, p))
        })
        .collect();
    logs.sort();
    logs.iter()
        .rev()
        .find_map(|(_, p)| panic_reason(&std::fs::read_to_string(p).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What systemd-pstore archived after a dm-verity panic on the test node: the
    /// parts of the efi records, oldest first.
    const VERITY: &str = "dmesg-efi-179607048102001:\nPanic#1 Part2\n\
        <6>[    8.101] systemd[1]: Starting systemd-veritysetup@root.service...\n\
        <3>[    8.580721] device-mapper: verity: 253:2: data block 0 is corrupted\n\
        dmesg-efi-179607048101001:\nPanic#1 Part1\n\
        <0>[    8.584111] Kernel panic - not syncing: dm-verity device corrupted\n\
        <4>[    8.584200] CPU: 1 PID: 7 Comm: kworker/u4:0 Not tainted 6.1.0-57-cloud-amd64\n";

    #[test]
    fn a_verity_panic_names_the_block() {
        assert_eq!(
            panic_reason(VERITY).as_deref(),
            Some(
                "the kernel panicked: dm-verity device corrupted \
                 (device-mapper: verity: 253:2: data block 0 is corrupted)"
            )
        );
    }

    #[test]
    fn a_panic_without_an_error_before_it() {
        let log = "<6>[ 1.0] booting\n<0>[ 2.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        assert_eq!(
            panic_reason(log).as_deref(),
            Some("the kernel panicked: VFS: Unable to mount root fs")
        );
    }

    #[test]
    fn an_error_long_before_the_panic_is_not_its_cause() {
        let log = "<3>[ 2.0] ata1: link down\n<6>[ 9.0] still booting\n\
                   <0>[ 9.5] Kernel panic - not syncing: Attempted to kill init!\n";
        assert_eq!(
            panic_reason(log).as_deref(),
            Some("the kernel panicked: Attempted to kill init!")
        );
    }

    #[test]
    fn no_panic_no_reason() {
        assert_eq!(
            panic_reason("<3>[ 1.0] ata1: link down\n<6>[ 2.0] ok\n"),
            None
        );
        assert_eq!(panic_reason(""), None);
    }

    #[test]
    fn only_logs_archived_after_the_reboot_count() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("100");
        std::fs::create_dir(&old).unwrap();
        let crash = "<0>[ 1.0] Kernel panic - not syncing: an older crash\n";
        std::fs::write(old.join("dmesg.txt"), crash).unwrap();
        // The reboot into the new slot is asked for.
        let before = kept(dir.path());
        assert_eq!(before, KeptLogs(["100".to_owned()].into()));
        assert_eq!(new_panic(dir.path(), &before), None);
        // Its failed try is archived, with a time older than the old crash's (a
        // wall-clock step): it still counts, and the old crash still does not.
        let new = dir.path().join("200");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("dmesg.txt"), VERITY).unwrap();
        std::fs::File::options()
            .write(true)
            .open(new.join("dmesg.txt"))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
        let why = new_panic(dir.path(), &before).unwrap();
        assert!(why.contains("data block 0 is corrupted"), "{why}");
        // Without the note taken at the reboot, the old crash is the newest by time.
        assert_eq!(
            new_panic(dir.path(), &KeptLogs::default()).as_deref(),
            Some("the kernel panicked: an older crash")
        );
        let gone = dir.path().join("missing");
        assert_eq!(kept(&gone), KeptLogs::default());
        assert_eq!(new_panic(&gone, &before), None);
    }
}
