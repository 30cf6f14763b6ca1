//! `imagebuild demo`: Build a signed example bundle from generated sample content, then inspect it.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the key pair, the sample inputs and the bundle.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let Ctx { progress, cancel } = ctx;
    let Args { out: dir } = a;

    install_interrupt_handler(&cancel)?;
    let d = demo::run(&dir, &progress, &cancel)?;
    for n in &d.notes {
        eprintln!("imagebuild: note: {n}");
    }
    let r = report::inspect(&d.bundle)?;
    out(&r.render())?;
    out(&format!(
        "\nverify it:  imagebuild verify {} --pubkey {}\n",
        rel(&d.bundle),
        rel(&d.public_key)
    ))?;
    if !check_tool("minisign") {
        return Ok(ExitCode::SUCCESS);
    }
    out(&format!(
        "or by hand: tar -xf {b} manifest.json signatures/ && minisign -V -p {p} -m manifest.json -x signatures/*.minisig\n",
        b = rel(&d.bundle),
        p = rel(&d.public_key)
    ))?;

    Ok(ExitCode::SUCCESS)
}
