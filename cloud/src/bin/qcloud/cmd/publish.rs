//! `qcloud publish`: upload, register, copy, share and record an AMI.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// A raw cloud disk image (made by `imagebuild disk --target cloud`).
    #[arg(long, conflicts_with = "bundle", required_unless_present = "bundle")]
    image: Option<PathBuf>,
    /// A cloud `.qimg`: its disk image is built first (verified with --pubkey).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Public key(s) that must have signed the bundle.
    #[arg(long)]
    pubkey: Vec<PathBuf>,
    /// AMI name.
    #[arg(long)]
    name: String,
    /// Release version (default: the bundle's, or the image's platform version).
    #[arg(long)]
    version: Option<String>,
    /// Product, for a raw image not made by `imagebuild disk` (then --version too).
    #[arg(long)]
    product: Option<String>,
    /// Regions, comma-separated; the first is where the image is uploaded.
    #[arg(long, value_delimiter = ',', required = true)]
    regions: Vec<String>,
    /// Who may launch it: a 12-digit account id or `public` (repeatable).
    #[arg(long)]
    launch_permission: Vec<String>,
    /// SSM parameter: a template with {product} {version} {name} {region}, or a
    /// prefix (then `<prefix>/{product}/{version}/image_id`).
    #[arg(long)]
    ssm_prefix: Option<String>,
    /// Write the result record here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the result record as JSON.
    #[arg(long)]
    json: bool,
    /// Endpoint for every AWS service (an emulator).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// AWS profile.
    #[arg(long)]
    profile: Option<String>,
    /// Blocks uploaded at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds one HTTP attempt may take.
    #[arg(long, default_value_t = 20)]
    attempt_timeout: u64,
    /// Seconds one call may take with retries.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Seconds to wait for the snapshot and each AMI.
    #[arg(long, default_value_t = 1800)]
    wait: u64,
    /// Seconds between polls while waiting.
    #[arg(long, default_value_t = 5)]
    poll: u64,
    /// NitroTPM 2.0 (UEFI boot is always set).
    #[arg(long)]
    tpm: bool,
    /// Require IMDSv2 on instances.
    #[arg(long)]
    imds_v2: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let launch = a
        .launch_permission
        .iter()
        .map(|p| p.parse::<Permission>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let work = tempfile::tempdir().context("creating a work directory")?;
    let (image, product, version, root_hash) = match (&a.image, &a.bundle) {
        (Some(img), _) => match (identity(img), &a.product, &a.version) {
            (Ok((product, platform, hash)), _, _) => (
                img.clone(),
                product,
                a.version.clone().unwrap_or(platform),
                hash,
            ),
            // A raw image without qimg's layout: the operator names it.
            (Err(_), Some(p), Some(v)) => (img.clone(), p.clone(), v.clone(), "unknown".into()),
            (Err(e), _, _) => {
                return Err(anyhow::Error::new(e).context(
                    "not a disk image made by `imagebuild disk`: pass --product and --version",
                ));
            }
        },
        (None, Some(bundle)) => {
            anyhow::ensure!(!a.pubkey.is_empty(), "--bundle needs --pubkey");
            let keys = a
                .pubkey
                .iter()
                .map(|p| {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    qimg::PublicKey::from_file_text(&text)
                        .with_context(|| format!("public key {}", p.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let keys = qimg::TrustedKeys::new(keys);
            let out = work.path().join("disk.raw");
            eprintln!(
                "qcloud: building the cloud disk image from {}",
                bundle.display()
            );
            imagebuild::disk::build(&imagebuild::disk::DiskOptions {
                bundle,
                keys: Some(&keys),
                out: &out,
                size: None,
                systemd_boot: std::path::Path::new(imagebuild::disk::SYSTEMD_BOOT),
                target: qimg::Target::Cloud,
                esp_mib: 256,
                root_mib: None,
                data_mib: 256,
                progress: &qimg::NoProgress,
                cancel: &imagebuild::Cancel::new(),
            })
            .map_err(cloud::Error::Build)?;
            let (product, platform, hash) = identity(&out)?;
            let version = match &a.version {
                Some(v) => v.clone(),
                None => {
                    let f = std::fs::File::open(bundle)?;
                    qimg::BundleReader::open(std::io::BufReader::new(f))?
                        .manifest()
                        .release
                        .version
                        .to_string()
                }
            };
            let _ = platform;
            (out, product, version, hash)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let ssm_template = a.ssm_prefix.as_ref().map(|p| {
        if p.contains('{') {
            p.clone()
        } else {
            format!(
                "{}/{{product}}/{{version}}/image_id",
                p.trim_end_matches('/')
            )
        }
    });
    let o = PublishOptions {
        image,
        name: a.name.clone(),
        product,
        version,
        root_hash,
        regions: a.regions[1..].to_vec(),
        launch,
        ssm_template,
        concurrency: a.concurrency,
        tpm: a.tpm,
        imds_v2: a.imds_v2,
        wait: Duration::from_secs(a.wait),
        poll: Duration::from_secs(a.poll),
        copy_concurrency: 4,
        aws: AwsOptions {
            region: a.regions[0].clone(),
            endpoint_url: a.endpoint_url.clone(),
            profile: a.profile.clone(),
            attempt_timeout: Duration::from_secs(a.attempt_timeout),
            operation_timeout: Duration::from_secs(a.timeout),
            static_credentials: None,
        },
    };
    let progress = qutil::cli::Bars::new("qcloud", ctx.quiet);
    let p = publish(&o, &progress).await?;
    drop(progress);
    let json = serde_json::to_string_pretty(&p)? + "\n";
    if let Some(out) = &a.output {
        write_atomic(out, json.as_bytes())?;
    }
    let text = if a.json { json } else { summary(&p) };
    qutil::cli::out(&text)?;
    let failed = p.failed();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("qcloud: failed in {}", failed.join(", "));
        Ok(ExitCode::from(1))
    }
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    qutil::fs::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn summary(p: &Published) -> String {
    let mut s = format!(
        "{} {} {} ({} blocks, {} MiB sent{})\n",
        p.name,
        p.product,
        p.version,
        p.blocks_sent,
        p.bytes_sent >> 20,
        if p.reused { ", reused" } else { "" }
    );
    for (region, r) in &p.regions {
        match (&r.image_id, &r.error) {
            (_, Some(e)) => s.push_str(&format!("  {region}: FAILED: {e}\n")),
            (Some(id), None) => s.push_str(&format!("  {region}: {id}\n")),
            (None, None) => s.push_str(&format!("  {region}: ?\n")),
        }
    }
    s
}
