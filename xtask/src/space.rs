//! Free disk space, checked before a gate that fills the disk: a full disk
//! otherwise shows up half an hour later as some package manager's
//! "No space left on device" deep inside a step (CI at 896ec73 failed so, in
//! the fresh root's `apt-get install chromium`).

use std::path::Path;

const GIB: u64 = 1 << 30;

/// What `cargo xtask ci` needs free where the target directory lives: a clean
/// clone's target after every gate is about 13 GiB, the fresh root on top of it
/// about 6 GiB at its peak (both measured on this project, 2026-12).
pub const CI_GIB: u64 = 22;
/// What `cargo xtask fresh-root` needs free for its root (the packages of every
/// group) and the demo's target directory inside it.
pub const FRESH_ROOT_GIB: u64 = 8;

/// The bytes an unprivileged writer can still use on `dir`'s file system.
pub fn free_bytes(dir: &Path) -> Result<u64, String> {
    qutil::fs::free_bytes(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))
}

/// The decision, apart from the system call: enough space, or an error that
/// says what needs it, how much, where, and how much is free.
pub fn verdict(what: &str, dir: &Path, free: u64, need_gib: u64) -> Result<(), String> {
    if free >= need_gib * GIB {
        return Ok(());
    }
    Err(format!(
        "{what} needs about {need_gib} GiB free on the file system of {}; {:.1} GiB is free \
         (free some space: old clones' target directories are the usual culprit)",
        dir.display(),
        free as f64 / GIB as f64
    ))
}

/// Checks `dir` (created if missing) has `need_gib` GiB free for `what`.
pub fn require(what: &str, dir: &Path, need_gib: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let free = free_bytes(dir)?;
    verdict(what, dir, free, need_gib)?;
    eprintln!(
        "xtask: {what}: {:.1} GiB free on {} (needs about {need_gib})",
        free as f64 / GIB as f64,
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_table() {
        let d = Path::new("/t");
        for (free, need, ok) in [
            (0, 0, true),
            (0, 1, false),
            (GIB - 1, 1, false),
            (GIB, 1, true),
            (22 * GIB, CI_GIB, true),
            (15 * GIB, CI_GIB, false),
        ] {
            let r = verdict("ci", d, free, need);
            assert_eq!(r.is_ok(), ok, "free {free} need {need}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains(&format!("needs about {need} GiB")), "{e}");
                assert!(e.contains("/t"), "{e}");
            }
        }
    }

    #[test]
    fn free_bytes_reads_a_real_file_system() {
        let free = free_bytes(Path::new("/")).expect("statvfs /");
        assert!(free > 0, "no free bytes on / at all?");
        assert!(free_bytes(Path::new("/no/such/dir/here")).is_err());
    }
}
