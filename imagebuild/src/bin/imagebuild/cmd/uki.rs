//! `imagebuild uki`: Build a Unified Kernel Image from the systemd EFI stub.

use crate::*;

#[derive(clap::Args)]
pub struct Args {
    /// The stub (package systemd-boot-efi).
    #[arg(long, default_value = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub")]
    stub: PathBuf,
    /// The kernel image.
    #[arg(long)]
    kernel: PathBuf,
    /// The initrd.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long)]
    cmdline: String,
    /// os-release file for .osrel (IMAGE_ID/IMAGE_VERSION decide boot order).
    #[arg(long)]
    os_release: PathBuf,
    /// .uname (default: read from the kernel's setup header).
    #[arg(long)]
    uname: Option<String>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let _ = ctx;
    let Args {
        stub,
        kernel,
        initrd,
        cmdline,
        os_release,
        uname,
        out: output,
    } = a;

    let sections = bootctl::uki::build::build_files(
        &stub,
        &kernel,
        initrd.as_deref(),
        &os_release,
        &cmdline,
        uname,
        &output,
    )?;
    eprintln!("imagebuild: wrote {}", output.display());
    for s in sections {
        out(&format!(
            "{:<10} vma {:#010x} size {:#010x}\n",
            s.name, s.virtual_address, s.virtual_size
        ))?;
    }

    Ok(ExitCode::SUCCESS)
}
