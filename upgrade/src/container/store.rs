//! The container store in a state directory: `containers/<version>/` staged
//! containers, `containers/.partial-<version>/` while staging, and
//! `installed.json` naming the active container and the one before it.

use std::io::Write;
use std::path::{Path, PathBuf};

use qimg::Version;
use serde::{Deserialize, Serialize};

use super::{StagingSink, cerr, extract_squashfs};
use crate::error::{Error, io_err};

/// Which containers are installed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledContainers {
    /// The container that runs (the installed release).
    pub active: Option<Version>,
    /// The one before it (kept for rollback).
    pub previous: Option<Version>,
}

/// The container store in a state directory.
#[derive(Clone, Debug)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    /// The store under state directory `state`.
    pub fn new(state: &Path) -> Containers {
        Containers {
            dir: state.join("containers"),
        }
    }

    /// Directory of a staged container.
    pub fn path(&self, version: &Version) -> PathBuf {
        self.dir.join(version.to_string())
    }

    fn partial(&self, version: &Version) -> PathBuf {
        self.dir.join(format!(".partial-{version}"))
    }

    /// What is installed.
    pub fn installed(&self) -> Result<InstalledContainers, Error> {
        let p = self.dir.join("installed.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::StateDamaged {
                path: p,
                field: ".".into(),
                source: crate::error::Damage::Syntax(e.to_string()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(InstalledContainers::default())
            }
            Err(e) => Err(io_err("reading", p)(e)),
        }
    }

    /// Makes `version` the active container (atomically), the old one previous.
    pub fn activate(&self, version: &Version) -> Result<InstalledContainers, Error> {
        let mut i = self.installed()?;
        if i.active.as_ref() != Some(version) {
            i.previous = i.active.take();
            i.active = Some(version.clone());
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let p = self.dir.join("installed.json");
        qutil::fs::write_json(&p, &i).map_err(io_err("writing", &p))?;
        Ok(i)
    }

    /// Puts `active` back as the active container and `previous` as previous.
    pub fn restore(&self, to: &InstalledContainers) -> Result<(), Error> {
        let p = self.dir.join("installed.json");
        qutil::fs::write_json(&p, to).map_err(io_err("writing", &p))
    }

    /// Starts staging `version`: a fresh partial directory and a sink for the
    /// component's bytes (data area, then hash area at `hash_offset`).
    pub fn begin(&self, version: &Version, hash_offset: u64) -> Result<StagingSink, Error> {
        let dir = self.partial(version);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let open = |name: &str| {
            let p = dir.join(name);
            std::fs::File::create(&p).map_err(io_err("creating", p))
        };
        Ok(StagingSink {
            data: std::io::BufWriter::with_capacity(1 << 20, open("image.raw")?),
            hash: std::io::BufWriter::new(open("image.verity")?),
            hash_offset,
            pos: 0,
        })
    }

    /// Finishes staging after the reader verified the component: writes the root
    /// hash, extracts the files when `extract` (process runtime), and renames the
    /// directory into place.
    pub fn finish(
        &self,
        version: &Version,
        sink: StagingSink,
        root_hash: &[u8; 32],
        extract: bool,
    ) -> Result<PathBuf, Error> {
        let dir = self.partial(version);
        let e = cerr(version);
        for mut w in [sink.data, sink.hash] {
            w.flush().map_err(io_err("writing", &dir))?;
        }
        std::fs::write(dir.join("image.roothash"), hex::encode(root_hash))
            .map_err(io_err("writing", dir.join("image.roothash")))?;
        if extract {
            extract_squashfs(&dir.join("image.raw"), &dir.join("rootfs")).map_err(&e)?;
        }
        // The image, its hash tree, the root hash and the extracted files reach the
        // disk before the directory is renamed into place, and the rename before
        // the record names it: after a power cut, a recorded container is whole
        // (the test node once came back with an empty `/entry`).
        qutil::fs::sync_fs(&dir).map_err(io_err("syncing", &dir))?;
        let to = self.path(version);
        if to.exists() {
            std::fs::remove_dir_all(&to).map_err(io_err("removing", &to))?;
        }
        std::fs::rename(&dir, &to).map_err(io_err("renaming into place", &to))?;
        qutil::fs::sync_dir(&self.dir).map_err(io_err("syncing", &self.dir))?;
        Ok(to)
    }

    /// Removes a partial or staged container that is not installed.
    pub fn discard(&self, version: &Version) -> Result<(), Error> {
        let i = self.installed()?;
        for d in [self.partial(version), self.path(version)] {
            let installed = [&i.active, &i.previous]
                .iter()
                .any(|v| v.as_ref() == Some(version))
                && d == self.path(version);
            if d.exists() && !installed {
                std::fs::remove_dir_all(&d).map_err(io_err("removing", &d))?;
            }
        }
        Ok(())
    }

    /// Removes every staged container other than the active and previous ones.
    pub fn prune(&self) -> Result<Vec<String>, Error> {
        let i = self.installed()?;
        let mut gone = vec![];
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(gone);
        };
        for d in rd.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let keep = name == "installed.json"
                || [&i.active, &i.previous]
                    .into_iter()
                    .flatten()
                    .any(|v| v.to_string() == name);
            if !keep && d.path().is_dir() {
                std::fs::remove_dir_all(d.path()).map_err(io_err("removing", d.path()))?;
                gone.push(name);
            }
        }
        Ok(gone)
    }
}
