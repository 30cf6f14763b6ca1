//! Container images and the runtimes that run them.
//!
//! A staged container is a directory `containers/<version>/` in the state directory:
//! `image.raw` (the squashfs), `image.verity` (its dm-verity hash tree) and
//! `image.roothash` — the names `systemd-nspawn --image=…/image.raw` finds on its
//! own — and, for the process runtime, `rootfs/` (the image's files). It is written
//! under `containers/.partial-<version>/` and renamed into place once the bundle
//! reader verified the component's digest. `installed.json` names the active
//! container and the one before it.
//!
//! Runtimes ([`Runtime`]):
//! - [`Nspawn`] (real nodes): `systemctl start qimg-container@<version>.service`, a
//!   template unit running `systemd-nspawn --image=/var/lib/qimg/containers/%i/image.raw`
//!   (docs/qq.md has the unit);
//! - [`Process`] (tests, demo): the image's `/entry` program run as a detached child
//!   process; it reports health by writing `ok` to `$QIMG_HEALTH_FILE`.
//!
//! Split by job: [`store`] (what is staged and installed, `installed.json`),
//! [`staging`] (the component's bytes into a partial directory), [`extract`]
//! (a squashfs image's files, for the process runtime), [`runtime`] (what runs
//! them).

use std::path::Path;

use crate::error::{ContainerFailure, Error, io_err};

pub mod extract;
pub mod runtime;
pub mod staging;
pub mod store;

pub use extract::extract_squashfs;
pub use runtime::{Nspawn, Process, Runtime, RuntimeConfig, runtime};
pub use staging::StagingSink;
pub use store::{Containers, InstalledContainers};

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    qutil::fs::write_atomic(path, bytes).map_err(io_err("writing", path))
}

/// The error of container `version` failing so.
fn cerr(version: &impl std::fmt::Display) -> impl Fn(ContainerFailure) -> Error + '_ {
    move |failure| Error::Container {
        version: version.to_string(),
        failure,
    }
}
