//! Crash points for tests: with `QIMG_PAUSE_AT=<name>` in the environment, a process
//! reaching the named point says so on stderr and stops there until it is killed,
//! so a test can kill a writer at an exact step (RAUC's tests inject faults the same
//! way). Without the variable this does nothing.
//!
//! Points: `slot-write` (half of a slot image written), `entry-write` (a new boot
//! entry written under its temporary name, not yet renamed).

/// The environment variable naming the point to stop at.
pub const ENV: &str = "QIMG_PAUSE_AT";

/// Stops here forever if `QIMG_PAUSE_AT` names this point.
pub fn reached(name: &str) {
    if std::env::var(ENV).as_deref() == Ok(name) {
        eprintln!("qimg: paused at {name}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
