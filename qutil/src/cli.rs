//! The glue every binary shares: results on stdout (a closed pipe is not an error),
//! JSON printing, one exit-code convention with one message style, and one indicatif
//! adapter for [`crate::progress::Progress`].
//!
//! Exit codes: 0 done, 1 a negative answer (refused, blocked, verification failed,
//! no fallback), 2 an error. Messages: `<tool>: <error and its causes, `: `-joined>`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{Progress, Task};

/// A negative answer.
pub const EXIT_NO: u8 = 1;
/// An error.
pub const EXIT_ERROR: u8 = 2;

/// Writes `text` to stdout; a reader that went away (broken pipe) is not an error,
/// as in ripgrep.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints `v` as pretty JSON and a newline on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// Runs a binary's `run` and maps its result: `Ok(code)` as is, an error to
/// [`EXIT_ERROR`] with [`error`]'s line on stderr.
pub fn main(tool: &str, run: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    match run() {
        Ok(c) => c,
        Err(e) => {
            error(tool, &format!("{e:#}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The one style of an error line: `tool: error: what: cause: …`.
pub fn error(tool: &str, text: &str) {
    eprintln!("{tool}: error: {text}");
}

/// Progress on stderr: a spinner with the current step and a bar per byte task on a
/// terminal; otherwise (or when quiet) no bars and one line per step (`tool: text`),
/// the log of what happened.
pub struct Bars {
    tool: &'static str,
    multi: MultiProgress,
    step: ProgressBar,
    tty: bool,
    timings: bool,
}

struct Bar {
    bar: ProgressBar,
    /// `(tool, task, start)` when timings are printed.
    timed: Option<(&'static str, String, std::time::Instant)>,
}

impl Task for Bar {
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if let Some((tool, what, start)) = &self.timed {
            let secs = start.elapsed().as_secs_f64();
            let rate = self.bar.position() as f64 / secs.max(1e-9) / (1 << 20) as f64;
            eprintln!("{tool}: {what}: {secs:.2} s ({rate:.0} MiB/s)");
        }
    }
}

impl Bars {
    /// Bars for `tool`; `quiet` draws none (step lines are still printed).
    pub fn new(tool: &'static str, quiet: bool) -> Bars {
        let tty = !quiet && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let step = multi.add(
            ProgressBar::new_spinner()
                .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid")),
        );
        if tty {
            step.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        Bars {
            tool,
            multi,
            step,
            tty,
            timings: false,
        }
    }

    /// Also prints each task's time and rate on stderr when it ends (`--verbose`).
    pub fn timings(mut self, on: bool) -> Bars {
        self.timings = on;
        self
    }
}

impl Progress for Bars {
    fn begin(&self, what: &str, total: Option<u64>) -> Box<dyn Task> {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "  {msg:22} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        Box::new(Bar {
            bar: self.multi.add(bar.with_message(what.to_owned())),
            timed: self
                .timings
                .then(|| (self.tool, what.to_owned(), std::time::Instant::now())),
        })
    }

    fn step(&self, text: &str) {
        if self.tty {
            self.step.set_message(text.to_owned());
        } else {
            eprintln!("{}: {text}", self.tool);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.step.finish_and_clear();
    }
}
