//! Crash points for tests: with `QIMG_PAUSE_AT=<name>` in the environment, a process
//! reaching the named point says so on stderr and stops there until it is killed,
//! so a test can kill a writer at an exact step (RAUC's tests inject faults the same
//! way). Without the variable this does nothing.
//!
//! Points: `slot-write` (half of a slot image written), `entry-write` (a new boot
//! entry written under its temporary name, not yet renamed); the upgrade engine's
//! `state:<STATE>` and `step:<step>` after each write of its state record.

/// The environment variable naming the point to stop at.
pub const ENV: &str = "QIMG_PAUSE_AT";
/// With this set to a number of seconds, the process goes on after that pause
/// (so a test can deliver a signal, e.g. Ctrl-C, at an exact step).
pub const SECS_ENV: &str = "QIMG_PAUSE_SECS";

/// How long a process waits at its crash point to be killed before it gives up.
pub const MAX_PAUSE_SECS: u64 = 600;

/// Stops here if `QIMG_PAUSE_AT` names this point: until killed (at most
/// [`MAX_PAUSE_SECS`], then the process exits with status 3), or for
/// `QIMG_PAUSE_SECS` seconds.
pub fn reached(name: &str) {
    if std::env::var(ENV).as_deref() == Ok(name) {
        eprintln!("qimg: paused at {name}");
        let secs = std::env::var(SECS_ENV)
            .ok()
            .and_then(|s| s.parse::<f64>().ok());
        match secs {
            Some(s) => std::thread::sleep(std::time::Duration::from_secs_f64(s)),
            None => {
                std::thread::sleep(std::time::Duration::from_secs(MAX_PAUSE_SECS));
                eprintln!("qimg: nobody killed me at {name} within {MAX_PAUSE_SECS} s; exiting");
                std::process::exit(3);
            }
        }
    }
}
