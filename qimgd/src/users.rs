//! The users: names and salted Argon2id password hashes (PHC strings), as one
//! document (`qimgd.users/1`). A node outside a cluster keeps it in its users
//! file (mode 0600, replaced atomically); a cluster keeps it in etcd
//! (`/qimg/<cluster>/users`, written by compare-and-swap), so a user or a
//! password is the same on every node. `qimgd user add|passwd|remove` edit it;
//! the agent reads it at every login and every request, so edits take effect
//! without a restart.

use std::path::Path;

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
    /// are no longer accepted. Set one second ahead of the clock, so that a
    /// token issued in the second of the change (before it) is void too; a
    /// login after the change is issued at this second (`api::session`).
    pub changed: u64,
}

/// The users as stored (file or etcd): the same document either way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doc {
    /// Always [`USERS_SCHEMA`].
    pub schema: String,
    /// Every user.
    pub users: Vec<User>,
}

/// The users, loaded; edits are in memory until saved where they came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
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
    /// Loads the users file `path`; a missing file is no users.
    pub fn load(path: &Path) -> Result<Users, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let doc: Doc = serde_json::from_slice(&bytes).map_err(|e| Error::UsersDamaged {
                    at: path.display().to_string(),
                    problem: e.to_string(),
                })?;
                Users::from_doc(doc, &path.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Users::default()),
            Err(e) => Err(io_err("reading", path)(e)),
        }
    }

    /// The users of a document read from `at` (for errors).
    pub fn from_doc(doc: Doc, at: &str) -> Result<Users, Error> {
        if doc.schema != USERS_SCHEMA {
            return Err(Error::UsersDamaged {
                at: at.into(),
                problem: format!("schema {:?}, expected {USERS_SCHEMA:?}", doc.schema),
            });
        }
        Ok(Users { users: doc.users })
    }

    /// The document to store.
    pub fn to_doc(&self) -> Doc {
        Doc {
            schema: USERS_SCHEMA.into(),
            users: self.users.clone(),
        }
    }

    /// Saves the users file `path` (mode 0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let mut bytes =
            serde_json::to_vec_pretty(&self.to_doc()).map_err(|e| Error::Hash(e.to_string()))?;
        bytes.push(b'\n');
        qutil::fs::write_secret(path, &bytes).map_err(io_err("writing", path))
    }

    /// The users.
    pub fn list(&self) -> &[User] {
        &self.users
    }

    /// The user `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Adds a user.
    pub fn add(&mut self, name: &str, password: &str) -> Result<(), Error> {
        check_name(name)?;
        check_password(password)?;
        if self.get(name).is_some() {
            return Err(Error::UserExists(name.into()));
        }
        self.users.push(User {
            name: name.into(),
            hash: hash(password)?,
            changed: upgrade::now() + 1,
        });
        Ok(())
    }

    /// Sets a user's password; tokens issued before are void.
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), Error> {
        check_password(password)?;
        let h = hash(password)?;
        let u = self
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| Error::NoSuchUser(name.into()))?;
        u.hash = h;
        // Strictly later than any token issued so far, this second's included
        // (tokens carry whole seconds).
        u.changed = (upgrade::now() + 1).max(u.changed + 1);
        Ok(())
    }

    /// Removes a user; its tokens are void.
    pub fn remove(&mut self, name: &str) -> Result<(), Error> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(Error::NoSuchUser(name.into()));
        }
        Ok(())
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
        u.save(&p).unwrap();
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
        u.save(&p).unwrap();
        let u2 = Users::load(&p).unwrap();
        assert!(u2.verify("admin", "correct horse").is_none());
        assert!(u2.verify("admin", "battery staple").is_some());
        assert!(u2.get("admin").unwrap().changed > before);
        u.remove("admin").unwrap();
        u.save(&p).unwrap();
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
        assert!(u.list().is_empty(), "nothing added for a refused user");
        std::fs::write(&p, b"{\"schema\":\"other/1\",\"users\":[]}").unwrap();
        assert_eq!(Users::load(&p).unwrap_err().code(), "users-damaged");
        std::fs::write(&p, b"not json").unwrap();
        assert_eq!(Users::load(&p).unwrap_err().code(), "users-damaged");
    }

    #[test]
    fn the_document_round_trips_and_its_schema_is_checked() {
        let mut u = Users::default();
        u.add("admin", "correct horse").unwrap();
        let doc = u.to_doc();
        let back: Doc = serde_json::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(Users::from_doc(back, "etcd").unwrap(), u);
        let other = Doc {
            schema: "other/1".into(),
            ..doc
        };
        let e = Users::from_doc(other, "etcd key /qimg/c/users").unwrap_err();
        assert_eq!(e.code(), "users-damaged");
        assert!(e.to_string().contains("etcd key /qimg/c/users"), "{e}");
    }
}
