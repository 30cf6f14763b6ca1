//! `qimgd serve`.

use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run(config: qimgd::config::Config) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(qimgd::daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}
