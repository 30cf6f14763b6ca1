//! Login tokens kept for later commands, in the file and format Qumulo's client
//! uses (`$XDG_CONFIG_HOME/qumulo/credentials/<host>_<port>`, else
//! `~/.config/…`; JSON `{"bearer_token": …, "version": 1}`), so a login with
//! either client serves both. Directory 0700, file 0600, replaced atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The file format's version.
pub const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    bearer_token: Option<String>,
    version: Option<u32>,
}

/// The default credentials file for `host` and `port`.
pub fn default_path(host: &str, port: u16) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".config")
        });
    config
        .join("qumulo/credentials")
        .join(format!("{}_{port}", host.to_lowercase()))
}

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::Credentials {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// The token kept in `path`, if any.
pub fn load(path: &Path) -> Result<Option<String>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(path, e.to_string())),
    };
    let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| bad(path, e.to_string()))?;
    if d.version != Some(VERSION) {
        return Err(bad(
            path,
            format!("version {:?}, expected {VERSION}", d.version),
        ));
    }
    Ok(d.bearer_token)
}

/// Keeps `token` in `path`.
pub fn save(path: &Path, token: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| bad(path, e.to_string()))?;
    }
    let mut bytes = serde_json::to_vec(&OnDisk {
        bearer_token: Some(token.into()),
        version: Some(VERSION),
    })
    .map_err(|e| bad(path, e.to_string()))?;
    bytes.push(b'\n');
    qutil::fs::write_secret(path, &bytes).map_err(|e| bad(path, e.to_string()))
}

/// Forgets the token in `path`; true when there was one.
pub fn remove(path: &Path) -> Result<bool, Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(bad(path, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cfg/qumulo/credentials/h_8000");
        assert_eq!(load(&p).unwrap(), None);
        save(&p, "tok").unwrap();
        assert_eq!(load(&p).unwrap().as_deref(), Some("tok"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        // Qumulo's client writes the same shape.
        std::fs::write(&p, br#"{"bearer_token": "q", "version": 1}"#).unwrap();
        assert_eq!(load(&p).unwrap().as_deref(), Some("q"));
        std::fs::write(&p, br#"{"bearer_token": "q", "version": 2}"#).unwrap();
        assert_eq!(load(&p).unwrap_err().code(), "credentials");
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
    }

    #[test]
    fn default_path_is_per_host_and_port() {
        let p = default_path("Node1", 8000);
        assert!(
            p.ends_with("qumulo/credentials/node1_8000"),
            "{}",
            p.display()
        );
    }
}
