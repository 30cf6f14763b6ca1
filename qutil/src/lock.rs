//! The one lock for "one operation at a time here": an open-file-description lock
//! (`F_OFD_SETLK`) on a file, released when the holder ends however it ends, held
//! against other threads of the same process too, with the holder's pid written in
//! the file so a refusal can say who holds it. The upgrade engine's node lock and
//! the firmware journal's flash lock are this lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long [`try_lock`] tries again before it says the lock is held. A child forked
/// by another thread of the last holder shares the open file description until its
/// exec closes it, so a lock just released can look held for a moment, to the
/// releasing process and to every other one alike (a multi-threaded agent or test
/// that spawns tools while it takes and drops the lock). The pid in the file then
/// names the process that released it. A lock really held is refused after this.
pub const RELEASE_GRACE: Duration = Duration::from_secs(1);

/// Holds the lock while alive.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Someone else holds the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The holder's pid, as it wrote it.
    pub pid: Option<String>,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn whole_file(kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

fn held(path: &Path) -> Held {
    let pid = std::fs::read_to_string(path).unwrap_or_default();
    let pid = pid.trim();
    Held {
        pid: (!pid.is_empty()).then(|| pid.to_owned()),
    }
}

/// Takes the lock on `path` (created if missing), or says who holds it.
pub fn try_lock(path: &Path) -> io::Result<Result<Lock, Held>> {
    let mut f = open(path)?;
    let deadline = Instant::now() + RELEASE_GRACE;
    loop {
        let mut fl = whole_file(libc::F_WRLCK);
        // SAFETY: fcntl on a descriptor we own with a valid flock struct.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(Err(held(path)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(Ok(Lock { _file: f }))
}

/// Who holds the lock on `path`, if anyone. Only tests it (`F_OFD_GETLK`), so it
/// never gets in the way of a process taking it.
pub fn holder(path: &Path) -> Option<Held> {
    let f = open(path).ok()?;
    let mut fl = whole_file(libc::F_WRLCK);
    // SAFETY: as in `try_lock`.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        return None;
    }
    (i32::from(fl.l_type) != libc::F_UNLCK).then(|| held(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_exclusive_even_within_a_process_and_says_who_holds_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        assert_eq!(holder(&p), None);
        let l = try_lock(&p).unwrap().unwrap();
        let me = Held {
            pid: Some(std::process::id().to_string()),
        };
        assert_eq!(holder(&p), Some(me.clone()));
        assert_eq!(try_lock(&p).unwrap().unwrap_err(), me);
        drop(l);
        assert_eq!(holder(&p), None);
        assert!(try_lock(&p).unwrap().is_ok());
    }

    #[test]
    fn a_lock_released_while_a_forked_child_shares_it_is_taken_once_the_child_execs() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        use std::os::unix::process::CommandExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let l = try_lock(&p).unwrap().unwrap();
        let (mut forked, tell) = UnixStream::pair().unwrap();
        forked
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let tell = tell.as_raw_fd();
        let mut c = std::process::Command::new("true");
        // SAFETY: the closure only writes one byte and sleeps (async-signal-safe).
        unsafe {
            c.pre_exec(move || {
                libc::write(tell, b"f".as_ptr().cast(), 1);
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            });
        }
        // Another thread forks; its child holds the lock's description from the fork
        // until its exec (`spawn` returns only after the exec).
        let spawner = std::thread::spawn(move || c.spawn().unwrap().wait().unwrap());
        let mut b = [0u8];
        forked
            .read_exact(&mut b)
            .expect("waiting 10 s for the child's fork");
        drop(l);
        // As if another process had released it: a waiter in a third process sees
        // the same (the old code retried only for its own pid).
        std::fs::write(&p, "1").unwrap();
        assert!(holder(&p).is_some(), "the forked child shares the lock");
        let t = Instant::now();
        let again = try_lock(&p).unwrap();
        assert!(again.is_ok(), "refused: {again:?}");
        assert!(t.elapsed() < RELEASE_GRACE, "{:?}", t.elapsed());
        assert!(spawner.join().unwrap().success());
    }
}
