//! Running an outside command with a time limit: its output is read while it
//! runs (a chatty command never blocks on a full pipe), and past the limit it is
//! killed. Used for firmware tools and version probes and for the restriper
//! probe.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why a command gave no output.
#[derive(Debug)]
pub enum RunError {
    /// The command line is empty.
    Empty,
    /// It could not be started.
    Start {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It ran past its deadline and was killed.
    TimedOut {
        /// The program.
        program: String,
    },
    /// Waiting for it failed.
    Wait {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Empty => f.write_str("empty command"),
            RunError::Start { program, .. } => write!(f, "cannot run {program}"),
            RunError::TimedOut { program } => write!(f, "{program} timed out"),
            RunError::Wait { program, .. } => write!(f, "waiting for {program}"),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Start { source, .. } | RunError::Wait { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = vec![];
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `argv` (no stdin) until it exits or `deadline` passes (then it is
/// killed); returns its status and output, whatever the status.
pub fn run_until(argv: &[String], deadline: Instant) -> Result<Output, RunError> {
    let (prog, args) = argv.split_first().ok_or(RunError::Empty)?;
    let program = || prog.clone();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Start {
            program: program(),
            source,
        })?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // The readers end when the pipes close; a grandchild may keep
                // them open, so they are not waited for.
                return Err(RunError::TimedOut { program: program() });
            }
            Err(source) => {
                return Err(RunError::Wait {
                    program: program(),
                    source,
                });
            }
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn output_status_and_a_full_pipe() {
        let later = Instant::now() + Duration::from_secs(20);
        let o = run_until(&sh("echo out; echo err >&2; exit 3"), later).unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(
            (&o.stdout[..], &o.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
        // More than a pipe holds: read while it runs, not after.
        let o = run_until(&sh("head -c 1000000 /dev/zero"), later).unwrap();
        assert_eq!(o.stdout.len(), 1_000_000);
    }

    #[test]
    fn killed_past_the_deadline_and_clear_errors() {
        let t = Instant::now();
        let e = run_until(&sh("exec sleep 30"), t + Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RunError::TimedOut { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(e.to_string(), "sh timed out");
        let e = run_until(&["/nonexistent/tool".into()], t).unwrap_err();
        assert_eq!(e.to_string(), "cannot run /nonexistent/tool");
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(run_until(&[], t), Err(RunError::Empty)));
    }
}
