//! The users file: names and salted Argon2id password hashes (PHC strings), kept
//! mode 0600 and replaced atomically. `qimgd user add|passwd|remove` edit it; the
//! agent reads it at every login, so edits take effect without a restart.

use std::path::{Path, PathBuf};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_err};

/// The file's schema.
pub const USERS_SCHEMA: &str = "qimgd.users/1";

/// One user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub hash: String,
    /// When the password last changed (Unix seconds): tokens issued before it
    /// are no longer accepted.
    pub changed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    schema: String,
    users: Vec<User>,
}

/// The users file, loaded.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    users: Vec<User>,
}

/// A PHC hash of a password nobody has, verified when the user does not exist,
/// so a wrong name takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash("not a password").unwrap_or_default())
}

fn hash(password: &str) -> Result<String, Error> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Hash("the system random generator failed".into()))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| Error::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(Error::BadCredentials(
            "a user name is 1 to 64 characters of letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), Error> {
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(Error::BadCredentials(
            "a password is 8 to 1024 characters long",
        ));
    }
    Ok(())
}

impl Users {
    /// Loads `path`; a missing file is no users.
    pub fn load(path: &Path) -> Result<Users, Error> {
        let users = match std::fs::read(path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes).map_err(|e| Error::UsersDamaged {
                    path: path.to_owned(),
                    problem: e.to_string(),
                })?;
                if f.schema != USERS_SCHEMA {
                    return Err(Error::UsersDamaged {
                        path: path.to_owned(),
                        problem: format!("schema {:?}, expected {USERS_SCHEMA:?}", f.schema),
                    });
                }
                f.users
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        Ok(Users {
            path: path.to_owned(),
            users,
        })
    }

    /// The users.
    pub fn list(&self) -> &[User] {
        &self.users
    }

    /// The user `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    fn save(&self) -> Result<(), Error> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let f = File {
            schema: USERS_SCHEMA.into(),
            users: self.users.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&f).map_err(|e| Error::Hash(e.to_string()))?;
        bytes.push(b'\n');
        qutil::fs::write_secret(&self.path, &bytes).map_err(io_err("writing", &self.path))
    }

    /// Adds a user and saves the file.
    pub fn add(&mut self, name: &str, password: &str) -> Result<(), Error> {
        check_name(name)?;
        check_password(password)?;
        if self.get(name).is_some() {
            return Err(Error::UserExists(name.into()));
        }
        self.users.push(User {
            name: name.into(),
            hash: hash(password)?,
            changed: upgrade::now(),
        });
        self.save()
    }

    /// Sets a user's password and saves the file; tokens issued before are void.
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), Error> {
        check_password(password)?;
        let h = hash(password)?;
        let u = self
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| Error::NoSuchUser(name.into()))?;
        u.hash = h;
        // Strictly later than any token issued so far (tokens carry whole seconds).
        u.changed = upgrade::now().max(u.changed + 1);
        self.save()
    }

    /// Removes a user and saves the file; its tokens are void.
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(Error::NoSuchUser(name.into()));
        }
        self.save()
    }

    /// The user, when `password` is theirs. Takes as long for an unknown name.
    pub fn verify(&self, name: &str, password: &str) -> Option<&User> {
        let user = self.get(name);
        let phc = user.map_or(dummy_hash(), |u| u.hash.as_str());
        let ok = PasswordHash::new(phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        user.filter(|_| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn add_verify_passwd_remove() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etc/users.json");
        let mut u = Users::load(&p).unwrap();
        assert!(u.list().is_empty());
        u.add("admin", "correct horse").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(!text.contains("correct horse"));
        let u = Users::load(&p).unwrap();
        assert!(u.verify("admin", "correct horse").is_some());
        assert!(u.verify("admin", "wrong horse").is_none());
        assert!(u.verify("nobody", "correct horse").is_none());
        let mut u = Users::load(&p).unwrap();
        assert_eq!(
            u.add("admin", "x".repeat(9).as_str()).unwrap_err().code(),
            "user-exists"
        );
        let before = u.get("admin").unwrap().changed;
        u.passwd("admin", "battery staple").unwrap();
        let u2 = Users::load(&p).unwrap();
        assert!(u2.verify("admin", "correct horse").is_none());
        assert!(u2.verify("admin", "battery staple").is_some());
        assert!(u2.get("admin").unwrap().changed > before);
        u.remove("admin").unwrap();
        assert!(Users::load(&p).unwrap().get("admin").is_none());
        assert_eq!(u.remove("admin").unwrap_err().code(), "no-such-user");
    }

    #[test]
    fn refuses_bad_names_passwords_and_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("users.json");
        let mut u = Users::load(&p).unwrap();
        assert_eq!(
            u.add("a b", "long enough").unwrap_err().code(),
            "bad-credentials"
        );
        assert_eq!(
            u.add("", "long enough").unwrap_err().code(),
            "bad-credentials"
        );
        assert_eq!(u.add("ok", "short").unwrap_err().code(), "bad-credentials");
        assert!(!p.exists(), "nothing written for a refused user");
        std::fs::write(&p, b"{\"schema\":\"other/1\",\"users\":[]}").unwrap();
        assert_eq!(Users::load(&p).unwrap_err().code(), "users-damaged");
        std::fs::write(&p, b"not json").unwrap();
        assert_eq!(Users::load(&p).unwrap_err().code(), "users-damaged");
    }
}
