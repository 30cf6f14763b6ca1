//! `imagebuild bundle`: Build a signed bundle from a release spec.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The release spec (TOML).
    #[arg(long)]
    spec: PathBuf,
    /// Secret key to sign with; repeat to sign with several keys (key rotation).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Print the resulting manifest as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// MiB of memory each filesystem image may use while staged; larger images
    /// are staged in a temporary file next to the output.
    #[arg(long, default_value_t = bundle::DEFAULT_STAGING_MEMORY >> 20)]
    staging_memory: u64,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let Ctx { progress, cancel } = ctx;
    let Args {
        spec,
        key,
        out: output,
        json: as_json,
        staging_memory,
    } = a;

    install_interrupt_handler(&cancel)?;
    let spec_data = ReleaseSpec::load(&spec)?;
    let keys = key
        .iter()
        .map(|k| keys::load_secret(k))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let manifest = bundle::build(&BuildOptions {
        spec: &spec_data,
        source_date_epoch: source_date_epoch(&spec_data)?,
        keys: &keys,
        out: &output,
        progress: &progress,
        cancel: &cancel,
        staging_memory: staging_memory << 20,
    })?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "imagebuild: wrote {} ({}) in {:.1} s",
        output.display(),
        report::human_size(size),
        start.elapsed().as_secs_f64()
    );
    if as_json {
        out(std::str::from_utf8(&manifest.to_bytes()?)?)?;
    }

    Ok(ExitCode::SUCCESS)
}
