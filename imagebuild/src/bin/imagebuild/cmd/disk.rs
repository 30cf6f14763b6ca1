//! `imagebuild disk`: Build a bootable node disk image from a bundle: slot A filled, slot B empty.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The bundle.
    #[arg(long)]
    bundle: PathBuf,
    /// Output image (sparse).
    #[arg(long)]
    out: PathBuf,
    /// Verify the bundle's signature with this public key (repeatable); without
    /// it only the bundle's digests are checked.
    #[arg(long)]
    pubkey: Vec<PathBuf>,
    /// Total size, in bytes or with a K, M, G or T suffix (binary units; default:
    /// what the layout needs).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// systemd-boot EFI binary.
    #[arg(long, default_value = imagebuild::disk::SYSTEMD_BOOT)]
    systemd_boot: PathBuf,
    /// Target: onprem or cloud (cloud images are whole GiB, for EBS snapshots).
    #[arg(long, default_value = "onprem")]
    target: String,
    /// ESP size in MiB.
    #[arg(long, default_value_t = 256)]
    esp_mib: u64,
    /// Root partition size per slot in MiB (default: the image plus 25%).
    #[arg(long)]
    root_mib: Option<u64>,
    /// Data partition size in MiB.
    #[arg(long, default_value_t = 256)]
    data_mib: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let Ctx { progress, cancel } = ctx;
    let Args {
        bundle,
        out: output,
        pubkey,
        size,
        systemd_boot,
        target,
        esp_mib,
        root_mib,
        data_mib,
        json: as_json,
    } = a;

    install_interrupt_handler(&cancel)?;
    let target = match target.as_str() {
        "onprem" => qimg::Target::Onprem,
        "cloud" => qimg::Target::Cloud,
        other => anyhow::bail!("--target must be onprem or cloud, not {other:?}"),
    };
    let keys = pubkey
        .iter()
        .map(|k| keys::load_public(k))
        .collect::<Result<Vec<_>, _>>()?;
    let trusted = TrustedKeys::new(keys);
    let r = imagebuild::disk::build(&imagebuild::disk::DiskOptions {
        bundle: &bundle,
        keys: (!trusted.is_empty()).then_some(&trusted),
        out: &output,
        size,
        systemd_boot: &systemd_boot,
        target,
        esp_mib,
        root_mib,
        data_mib,
        progress: &progress,
        cancel: &cancel,
    })?;
    if as_json {
        json(&r)?;
    } else {
        out(&format!(
            "{}: {} bytes; slot A {}, slot B {}; entry {}\n",
            r.file.display(),
            r.size,
            r.slot_a,
            r.slot_b,
            r.entry
        ))?;
    }

    Ok(ExitCode::SUCCESS)
}
