//! `qcloud scan`: read and hash an image as an upload would, without uploading.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The image.
    #[arg(long)]
    image: PathBuf,
}

pub async fn run(a: Args) -> Result<ExitCode> {
    let Args { image } = a;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let start = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || cloud::image::hash_all(&image, threads)).await??;
    let mut v = serde_json::to_value(&r)?;
    v["seconds"] = serde_json::json!(start.elapsed().as_secs_f64());
    qutil::cli::print_json(&v)?;
    Ok(ExitCode::SUCCESS)
}
