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

/// Success.
pub const EXIT_OK: u8 = 0;
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
/// [`EXIT_ERROR`] with `tool: error: cause: …` on stderr.
pub fn main(tool: &str, run: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{tool}: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Progress on stderr: a spinner with the current step and a bar per byte task on a
/// terminal; one line per step (`tool: text`) otherwise; nothing when quiet.
pub struct Bars {
    tool: &'static str,
    multi: MultiProgress,
    step: ProgressBar,
    tty: bool,
    quiet: bool,
}

struct Bar(ProgressBar);

impl Task for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Bars {
    /// Bars for `tool`; `quiet` hides everything.
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
            quiet,
        }
    }

    /// True when bars are drawn (stderr is a terminal and not quiet).
    pub fn is_drawn(&self) -> bool {
        self.tty
    }

    /// Prints a line above the bars (or on stderr when none are drawn).
    pub fn println(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
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
        Box::new(Bar(self.multi.add(bar.with_message(what.to_owned()))))
    }

    fn step(&self, text: &str) {
        if self.tty {
            self.step.set_message(text.to_owned());
        } else if !self.quiet {
            eprintln!("{}: {text}", self.tool);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.step.finish_and_clear();
    }
}
