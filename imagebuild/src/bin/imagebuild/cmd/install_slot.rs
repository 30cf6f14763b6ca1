//! `imagebuild install-slot`: Install a bundle's platform into a slot of an existing node image (prepare, offline): the slot's entries go, the slot is rewritten and verified, its new entry gets --tries tries. The other slot is untouched.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The node image.
    #[arg(long)]
    image: PathBuf,
    /// The bundle.
    #[arg(long)]
    bundle: PathBuf,
    /// a or b.
    #[arg(long)]
    slot: char,
    /// Tries for the new entry (0 = uncounted).
    #[arg(long, default_value_t = 3)]
    tries: u32,
    /// Verify the bundle's signature with this public key (repeatable).
    #[arg(long)]
    pubkey: Vec<PathBuf>,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let Ctx { progress, .. } = ctx;
    let Args {
        image,
        bundle,
        slot,
        tries,
        pubkey,
    } = a;

    let slot = match slot.to_ascii_lowercase() {
        'a' => bootctl::layout::Slot::A,
        'b' => bootctl::layout::Slot::B,
        other => anyhow::bail!("--slot must be a or b, not {other:?}"),
    };
    let keys = pubkey
        .iter()
        .map(|k| keys::load_public(k))
        .collect::<Result<Vec<_>, _>>()?;
    let trusted = TrustedKeys::new(keys);
    let entry = imagebuild::disk::install_slot(
        &image,
        &bundle,
        (!trusted.is_empty()).then_some(&trusted),
        slot,
        (tries > 0).then_some(tries),
        &progress,
    )?;
    out(&format!("{entry}\n"))?;

    Ok(ExitCode::SUCCESS)
}
