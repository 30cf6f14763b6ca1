//! Login tokens: `qimgd1.<payload>.<mac>` with a base64url JSON payload (user,
//! issued, expires, nonce) and an HMAC-SHA256 over it with the node's token key
//! (32 random bytes, mode 0600). Stateless, so they survive a restart of the agent
//! and the reboot of an upgrade; in a cluster every node holds the same key, so a
//! token from one node is accepted by all. A token is void once it expires, its
//! user is removed, or its user's password changed after it was issued. A token
//! issued more than [`MAX_SKEW`] in the future, or for longer than the node's
//! `token_lifetime_secs`, is refused: whoever could mint one (with the key) still
//! cannot mint one that outlives the node's policy.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{Error, io_err};
use crate::users::Users;

const PREFIX: &str = "qimgd1";

/// How far in the future a token's issue time may be: the clocks of a
/// cluster's nodes differ a little, and a login right after a password change
/// is issued at the change's second (`crate::users`).
pub const MAX_SKEW: u64 = 60;

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The user.
    pub user: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Random, so two tokens issued in the same second differ.
    pub nonce: String,
}

/// Why a token is not accepted (the client sees only "401").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not a token of ours.
    #[error("the token is malformed")]
    Malformed,
    /// The MAC does not match: forged or from another cluster.
    #[error("the token's signature does not match")]
    Forged,
    /// Past its expiry.
    #[error("the token expired")]
    Expired,
    /// The user is gone or changed the password since.
    #[error("the token's user was removed or changed the password")]
    Revoked,
    /// Issued later than now (beyond the clocks' skew).
    #[error("the token was issued in the future")]
    FromTheFuture,
    /// Valid for longer than the node gives a login.
    #[error("the token is valid for longer than this node allows")]
    TooLong,
    /// Signed with a key the cluster rotated away from, past its last day
    /// (`crate::token_keys`).
    #[error("the token was signed with a retired key")]
    Retired,
}

/// The key tokens are signed with.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// Loads the key from `path`, generating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<TokenKey, Error> {
        Ok(TokenKey::from_bytes(&TokenKey::bytes_or_create(path)?))
    }

    /// [`TokenKey::load_or_create`], the key's bytes.
    pub fn bytes_or_create(path: &Path) -> Result<[u8; 32], Error> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                SystemRandom::new().fill(&mut b).map_err(|_| Error::Key {
                    what: "token key",
                    path: path.to_owned(),
                    problem: "the system random generator failed".into(),
                })?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
                }
                qutil::fs::write_secret(path, &b).map_err(io_err("writing", path))?;
                b
            }
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        bytes.as_slice().try_into().map_err(|_| Error::Key {
            what: "token key",
            path: path.to_owned(),
            problem: format!("{} bytes, expected 32", bytes.len()),
        })
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A token for `user`, issued at `iat`, valid `lifetime` seconds from then.
    pub fn issue(&self, user: &str, iat: u64, lifetime: u64) -> String {
        let mut nonce = [0u8; 12];
        // A failing generator leaves zeros: the MAC still protects the token.
        let _ = SystemRandom::new().fill(&mut nonce);
        self.sign(&Claims {
            user: user.into(),
            iat,
            exp: iat + lifetime,
            nonce: B64.encode(nonce),
        })
    }

    /// The token of `claims`, whatever they say (tests mint odd ones).
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signed = format!("{PREFIX}.{payload}");
        let mac = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(mac.as_ref()))
    }

    /// The claims of `token` when its MAC matches, it was not issued in the
    /// future (beyond [`MAX_SKEW`]), its lifetime is at most `max_lifetime`
    /// and it has not expired at `now`.
    pub fn check(&self, token: &str, now: u64, max_lifetime: u64) -> Result<Claims, Rejected> {
        let t = Parsed::of(token)?;
        if !self.signed(&t) {
            return Err(Rejected::Forged);
        }
        t.claims(now, max_lifetime)
    }

    /// Whether this key signed `t`.
    pub(crate) fn signed(&self, t: &Parsed) -> bool {
        hmac::verify(&self.key, t.signed.as_bytes(), &t.mac).is_ok()
    }

    /// [`TokenKey::check`], and the user still exists with the password the token
    /// was issued under.
    pub fn authenticate(
        &self,
        token: &str,
        users: &Users,
        now: u64,
        max_lifetime: u64,
    ) -> Result<Claims, Rejected> {
        admit(self.check(token, now, max_lifetime)?, users)
    }
}

/// A token taken apart, its signature not checked yet.
pub(crate) struct Parsed<'a> {
    signed: &'a str,
    payload: &'a str,
    mac: Vec<u8>,
}

impl<'a> Parsed<'a> {
    /// `qimgd1.<payload>.<mac>`, or [`Rejected::Malformed`].
    pub(crate) fn of(token: &'a str) -> Result<Parsed<'a>, Rejected> {
        let (signed, mac) = token.rsplit_once('.').ok_or(Rejected::Malformed)?;
        let (prefix, payload) = signed.split_once('.').ok_or(Rejected::Malformed)?;
        if prefix != PREFIX {
            return Err(Rejected::Malformed);
        }
        let mac = B64.decode(mac).map_err(|_| Rejected::Malformed)?;
        Ok(Parsed {
            signed,
            payload,
            mac,
        })
    }

    /// The claims, once a key is found to have signed it: not issued in the
    /// future (beyond [`MAX_SKEW`]), a lifetime of at most `max_lifetime`,
    /// not expired at `now`.
    pub(crate) fn claims(&self, now: u64, max_lifetime: u64) -> Result<Claims, Rejected> {
        let bytes = B64.decode(self.payload).map_err(|_| Rejected::Malformed)?;
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| Rejected::Malformed)?;
        if claims.iat > now.saturating_add(MAX_SKEW) {
            return Err(Rejected::FromTheFuture);
        }
        if claims.exp.saturating_sub(claims.iat) > max_lifetime {
            return Err(Rejected::TooLong);
        }
        if now >= claims.exp {
            return Err(Rejected::Expired);
        }
        Ok(claims)
    }
}

/// The claims of a checked token ([`TokenKey::check`]), if their user still
/// exists with the password the token was issued under.
pub fn admit(c: Claims, users: &Users) -> Result<Claims, Rejected> {
    match users.get(&c.user) {
        Some(u) if u.changed <= c.iat => Ok(c),
        _ => Err(Rejected::Revoked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_check_expire_forge() {
        let k = TokenKey::from_bytes(&[7; 32]);
        let t = k.issue("admin", 1000, 60);
        let c = k.check(&t, 1010, 60).unwrap();
        assert_eq!((c.user.as_str(), c.iat, c.exp), ("admin", 1000, 1060));
        assert_eq!(k.check(&t, 1060, 60), Err(Rejected::Expired));
        assert_ne!(t, k.issue("admin", 1000, 60), "nonces differ");
        let other = TokenKey::from_bytes(&[8; 32]);
        assert_eq!(other.check(&t, 1010, 60), Err(Rejected::Forged));
        // A payload changed to another user, MAC kept.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = Claims {
            user: "root".into(),
            iat: 1000,
            exp: 99999,
            nonce: String::new(),
        };
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&forged_claims).unwrap()),
            parts[2]
        );
        assert_eq!(k.check(&forged, 1010, 60), Err(Rejected::Forged));
        for bad in ["", "x", "qimgd1.a", "other.a.b", "qimgd1.a.!!"] {
            assert_eq!(k.check(bad, 0, 60), Err(Rejected::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_minted_token_cannot_outlive_the_policy() {
        let k = TokenKey::from_bytes(&[7; 32]);
        let claims = |iat: u64, exp: u64| Claims {
            user: "admin".into(),
            iat,
            exp,
            nonce: String::new(),
        };
        let now = 10_000;
        // Issued in the future, beyond the clocks' skew.
        let t = k.sign(&claims(now + MAX_SKEW + 1, now + 100));
        assert_eq!(k.check(&t, now, 3600), Err(Rejected::FromTheFuture));
        assert!(
            k.check(&k.sign(&claims(now + MAX_SKEW, now + 100)), now, 3600)
                .is_ok()
        );
        // Valid for ten years.
        let t = k.sign(&claims(now, now + 10 * 365 * 86_400));
        assert_eq!(k.check(&t, now, 3600), Err(Rejected::TooLong));
        assert!(
            k.check(&k.sign(&claims(now, now + 3600)), now, 3600)
                .is_ok()
        );
    }

    #[test]
    fn a_token_of_the_second_of_a_password_change_is_void() {
        let k = TokenKey::from_bytes(&[7; 32]);
        // A user whose password last changed long ago.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("users.json");
        let mut users = Users::default();
        users.add("admin", "correct horse").unwrap();
        users.save(&p).unwrap();
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let now = upgrade::now();
        doc["users"][0]["changed"] = (now - 100).into();
        std::fs::write(&p, serde_json::to_vec(&doc).unwrap()).unwrap();
        let mut users = Users::load(&p).unwrap();
        // Issued in the same second as the change that follows it.
        let login = |u: &Users| k.issue("admin", now.max(u.get("admin").unwrap().changed), 3600);
        let before = login(&users);
        assert!(k.authenticate(&before, &users, now, 3600).is_ok());
        users.passwd("admin", "battery staple").unwrap();
        assert_eq!(
            k.authenticate(&before, &users, now, 3600),
            Err(Rejected::Revoked)
        );
        // A login after the change is valid at once.
        let after = login(&users);
        assert!(k.authenticate(&after, &users, now, 3600).is_ok());
    }

    #[test]
    fn key_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/token.key");
        let a = TokenKey::load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = TokenKey::load_or_create(&p).unwrap();
        let t = a.issue("u", 5, 10);
        assert!(b.check(&t, 6, 10).is_ok(), "the kept key verifies");
        std::fs::write(&p, b"short").unwrap();
        assert_eq!(TokenKey::load_or_create(&p).err().unwrap().code(), "key");
    }
}
