//! `qimgd serve`.

use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run(config: qimgd::config::Config) -> Result<ExitCode> {
    // Large allocations (Argon2id's 19 MiB per login) from fresh mappings that go
    // back to the system when freed: a fixed threshold stops glibc from raising it
    // and keeping such blocks in a thread's arena, where the idle agent would hold
    // them (27 MiB idle RSS after one login without this, 8 MiB with it).
    // SAFETY: mallopt only tunes the allocator; no other thread runs yet.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(qimgd::daemon::run(config, |urls| {
        for u in urls {
            let _ = qutil::cli::out(&format!("listening {u}\n"));
        }
    }))?;
    Ok(ExitCode::SUCCESS)
}
