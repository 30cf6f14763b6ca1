//! `qq sim_create`: a simulated node from a disk image made by `imagebuild disk`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use qimg::Target;
use upgrade::node::FirmwareConfig;
use upgrade::{Agent, sim};

use crate::Ctx;

#[derive(clap::Args)]
pub struct Args {
    /// Node directory to create (what it creates is removed again on failure).
    #[arg(long)]
    dir: PathBuf,
    /// The disk image (copied into the node directory, sparse; the input is kept).
    #[arg(long)]
    disk: PathBuf,
    /// The bundle the image was made from (its container is installed).
    #[arg(long)]
    bundle: PathBuf,
    /// Trusted public key(s).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// Hardware model.
    #[arg(long)]
    model: String,
    /// onprem or cloud.
    #[arg(long, default_value = "onprem")]
    target: String,
    /// qfirmware device configuration, if the node has firmware to flash.
    #[arg(long)]
    firmware_devices: Option<PathBuf>,
    /// sysfs root for the firmware inventory.
    #[arg(long, default_value = "/")]
    sysroot: PathBuf,
    /// Seconds a new container or platform may take to become healthy.
    #[arg(long, default_value_t = 10)]
    health_timeout: u64,
}

pub fn run(_ctx: &Ctx, a: Args) -> Result<ExitCode> {
    let target = match a.target.as_str() {
        "onprem" => Target::Onprem,
        "cloud" => Target::Cloud,
        other => anyhow::bail!("--target must be onprem or cloud, not {other}"),
    };
    let node = sim::create(&sim::CreateOptions {
        dir: &a.dir,
        disk: &a.disk,
        bundle: &a.bundle,
        keys: &a.key,
        model: &a.model,
        target,
        firmware: a.firmware_devices.map(|devices| FirmwareConfig {
            devices,
            sysroot: a.sysroot,
        }),
        health_timeout_secs: a.health_timeout,
    })?;
    let machine = upgrade::machine_for(&node);
    crate::print_status(&Agent::new(node, machine))?;
    Ok(ExitCode::SUCCESS)
}
