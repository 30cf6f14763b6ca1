//! Key files: generating a pair, loading secret and public keys.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use qimg::{KeyId, PublicKey, SecretKey};

use crate::Error;

/// Paths of a generated key pair.
#[derive(Clone, Debug)]
pub struct KeyPairFiles {
    /// The secret key (`PREFIX.key`, mode 0600).
    pub secret: PathBuf,
    /// The public key (`PREFIX.pub`).
    pub public: PathBuf,
    /// The key id.
    pub id: KeyId,
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists {
                    path: path.to_owned(),
                }
            } else {
                Error::Output {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| Error::Output {
            path: path.to_owned(),
            source,
        })
}

/// Generates a key pair into `PREFIX.key` and `PREFIX.pub` (minisign formats; the
/// secret key unencrypted, as `minisign -G -W` writes it). Never overwrites a file.
pub fn generate(prefix: &Path) -> Result<KeyPairFiles, Error> {
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (secret, public) = (with_ext(".key"), with_ext(".pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Error::Exists { path: p.clone() });
        }
    }
    let key = SecretKey::generate().map_err(|source| Error::Key {
        path: secret.clone(),
        source,
    })?;
    write_new(&secret, &key.to_file_text(), 0o600)?;
    if let Err(e) = write_new(&public, &key.public().to_file_text(), 0o644) {
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    Ok(KeyPairFiles {
        secret,
        public,
        id: key.id,
    })
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Input {
        path: path.to_owned(),
        source,
    })
}

/// Loads a secret key file.
pub fn load_secret(path: &Path) -> Result<SecretKey, Error> {
    SecretKey::from_file_text(&read(path)?).map_err(|source| Error::Key {
        path: path.to_owned(),
        source,
    })
}

/// Loads a public key file.
pub fn load_public(path: &Path) -> Result<PublicKey, Error> {
    PublicKey::from_file_text(&read(path)?).map_err(|source| Error::Key {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_loadable_pair_with_private_mode_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let prefix = d.path().join("release");
        let files = generate(&prefix).unwrap();
        let mode = std::fs::metadata(&files.secret)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sk = load_secret(&files.secret).unwrap();
        let pk = load_public(&files.public).unwrap();
        assert_eq!(sk.public(), pk);
        assert_eq!(pk.id, files.id);
        let before = std::fs::read(&files.secret).unwrap();
        assert!(matches!(generate(&prefix), Err(Error::Exists { .. })));
        assert_eq!(std::fs::read(&files.secret).unwrap(), before);
    }
}
