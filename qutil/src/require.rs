//! The one policy for tests that need something from outside (a tool, a Debian
//! package's file, the AWS emulator, QEMU): present, the test runs; missing, the
//! test **fails** with what is missing and how to get it, unless the person running
//! it opted out with the named variable set to `1`, and then it prints `SKIPPED:`
//! and why. A heavy test never passes silently.

/// Whether a test that needs `what` runs. `present` says whether it is there;
/// `how` says how to get it; `opt_out` names the variable that skips it.
///
/// # Panics
/// When `what` is missing and `opt_out` is not `1`: that fails the test, by design.
pub fn require(present: bool, what: &str, how: &str, opt_out: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var(opt_out).as_deref() == Ok("1") {
        eprintln!("SKIPPED: {what} is missing and {opt_out}=1");
        return false;
    }
    panic!("{what} is missing: {how}. Set {opt_out}=1 to skip the tests that need it.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_runs_missing_fails_unless_opted_out() {
        assert!(require(true, "x", "y", "QUTIL_TEST_NEVER_SET"));
        let r = std::panic::catch_unwind(|| {
            require(false, "tool t", "apt install t", "QUTIL_TEST_NEVER_SET")
        });
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("tool t is missing: apt install t"), "{msg}");
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("QUTIL_TEST_OPT_OUT", "1") };
        assert!(!require(
            false,
            "tool t",
            "apt install t",
            "QUTIL_TEST_OPT_OUT"
        ));
    }
}
