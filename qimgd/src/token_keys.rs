//! The keys login tokens are signed with, and their rotation.
//!
//! A node alone signs with its `token.key`. A cluster starts the same way (the
//! file `qimgd cluster create` put in every node's directory); from the first
//! `qimgd cluster rotate-token-key` on, the keys are the cluster's document in
//! etcd (`token-keys`, [`SCHEMA`]) and the files are no longer read. One key
//! signs new logins; the keys rotated away from are still accepted until their
//! `retire_at` (one token lifetime after the rotation: every token they signed
//! has expired by then), then refused as retired.
//!
//! A rotation is two writes, so nobody is logged out by it: first the new key
//! is added as accepted but not signing, and every node's watch delivers it;
//! after a grace the new key signs and the old ones get their last day. A
//! token this node cannot match against the keys its watch delivered makes it
//! read the document from etcd once more, at most once a second
//! ([`Keys::may_refresh`]), so a node whose watch lags does not refuse a login
//! made on another node.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use qcluster::Store;
use qcluster::store::SharedDoc;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::token::{Claims, Parsed, Rejected, TokenKey};

/// The schema of the cluster's token keys document.
pub const SCHEMA: &str = "qimgd.token-keys/1";

/// At most this many keys are kept (the oldest retired ones go first): a
/// token that matches none costs a node one HMAC per key.
pub const MAX_KEYS: usize = 8;

/// How long a retired key is kept after its last day, so that its tokens are
/// refused as retired rather than as forged.
pub const RETIRED_KEPT_SECS: u64 = 86_400;

/// How often a token no key matches may make a node read the keys from etcd.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The cluster's token keys (`/qimg/<cluster>/token-keys`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysDoc {
    /// [`SCHEMA`].
    pub schema: String,
    /// The keys, oldest first.
    pub keys: Vec<KeyEntry>,
}

/// One key of [`KeysDoc`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Its number: 0 for the key of the cluster's files, then one more per
    /// rotation.
    pub id: u32,
    /// 32 bytes, base64url.
    pub key: String,
    /// Signs new logins (exactly one key does).
    pub issuing: bool,
    /// Refused from this Unix second on (a key rotated away from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<u64>,
}

/// The keys a node checks tokens against and signs them with.
pub struct KeyRing {
    keys: Vec<(u32, TokenKey, Option<u64>)>,
    issuing: usize,
}

impl KeyRing {
    /// One key that signs and is never retired (a node alone, or a cluster
    /// not rotated yet).
    pub fn single(key: TokenKey) -> KeyRing {
        KeyRing {
            keys: vec![(0, key, None)],
            issuing: 0,
        }
    }

    /// The keys of `doc`, checked: its schema, 32-byte keys, distinct ids,
    /// exactly one signing key and that one not retired.
    pub fn of(doc: &KeysDoc) -> Result<KeyRing, Error> {
        let bad = |problem: String| Error::TokenKeys { problem };
        if doc.schema != SCHEMA {
            return Err(bad(format!("schema {:?}, expected {SCHEMA:?}", doc.schema)));
        }
        let mut keys = vec![];
        let mut issuing = None;
        for (i, e) in doc.keys.iter().enumerate() {
            let bytes = B64
                .decode(&e.key)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| bad(format!("key {} is not 32 bytes of base64url", e.id)))?;
            if keys.iter().any(|(id, _, _)| *id == e.id) {
                return Err(bad(format!("key {} appears twice", e.id)));
            }
            if e.issuing {
                if issuing.is_some() || e.retire_at.is_some() {
                    return Err(bad("more than one key signs, or a retiring one".into()));
                }
                issuing = Some(i);
            }
            keys.push((e.id, TokenKey::from_bytes(&bytes), e.retire_at));
        }
        let issuing = issuing.ok_or_else(|| bad("no key signs new logins".into()))?;
        Ok(KeyRing { keys, issuing })
    }

    /// A token for `user` signed with the signing key ([`TokenKey::issue`]).
    pub fn issue(&self, user: &str, iat: u64, lifetime: u64) -> String {
        self.keys[self.issuing].1.issue(user, iat, lifetime)
    }

    /// The signing key's id.
    pub fn issuing_id(&self) -> u32 {
        self.keys[self.issuing].0
    }

    /// [`TokenKey::check`] against every key: a token signed by a key past
    /// its `retire_at` is [`Rejected::Retired`]; by none, [`Rejected::Forged`].
    pub fn check(&self, token: &str, now: u64, max_lifetime: u64) -> Result<Claims, Rejected> {
        let t = Parsed::of(token)?;
        let (_, _, retire_at) = self
            .keys
            .iter()
            .find(|(_, k, _)| k.signed(&t))
            .ok_or(Rejected::Forged)?;
        if retire_at.is_some_and(|r| now >= r) {
            return Err(Rejected::Retired);
        }
        t.claims(now, max_lifetime)
    }
}

/// A node's token keys: its file's key, or the cluster's document as the
/// watch delivered it (parsed once per revision).
pub struct Keys {
    file: Arc<KeyRing>,
    parsed: Mutex<Option<(i64, Arc<KeyRing>)>>,
    refreshed: Mutex<Option<Instant>>,
}

impl Keys {
    /// A node whose file holds `key`.
    pub fn new(key: TokenKey) -> Keys {
        Keys {
            file: Arc::new(KeyRing::single(key)),
            parsed: Mutex::new(None),
            refreshed: Mutex::new(None),
        }
    }

    /// The keys: the file's for a node alone (`store` `None`) or a cluster not
    /// rotated yet; else the cluster's document, as the watch delivered it, or
    /// from etcd itself when `fresh`.
    pub async fn ring(&self, store: Option<&Store>, fresh: bool) -> Result<Arc<KeyRing>, Error> {
        let Some(store) = store else {
            return Ok(self.file.clone());
        };
        let doc = if fresh {
            store.doc::<KeysDoc>(SharedDoc::TokenKeys).await
        } else {
            store.doc_seen::<KeysDoc>(SharedDoc::TokenKeys).await
        }
        .map_err(Error::Cluster)?;
        let Some((doc, revision)) = doc else {
            return Ok(self.file.clone());
        };
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, ring)) = parsed.as_ref()
            && *r == revision
        {
            return Ok(ring.clone());
        }
        let ring = Arc::new(KeyRing::of(&doc)?);
        *parsed = Some((revision, ring.clone()));
        Ok(ring)
    }

    /// Whether a token no key matched may make this node read the keys from
    /// etcd now: at most once per [`REFRESH_EVERY`] (a forger cannot make the
    /// node hammer etcd).
    pub fn may_refresh(&self) -> bool {
        let mut last = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < REFRESH_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

fn entry(id: u32, key: &[u8; 32], issuing: bool) -> KeyEntry {
    KeyEntry {
        id,
        key: B64.encode(key),
        issuing,
        retire_at: None,
    }
}

/// A rotation's first step: the keys with `new` added, accepted by every node
/// but not signing yet, and its id. `doc` `None`: the cluster still signs
/// with its files' key, `file_key` (id 0). A rotation left half done (a key
/// added but not signing) is taken up: that key, not another.
pub fn stage(doc: Option<&KeysDoc>, file_key: &[u8; 32], new: &[u8; 32]) -> (KeysDoc, u32) {
    let mut doc = doc.cloned().unwrap_or_else(|| KeysDoc {
        schema: SCHEMA.into(),
        keys: vec![entry(0, file_key, true)],
    });
    if let Some(pending) = doc
        .keys
        .iter()
        .find(|k| !k.issuing && k.retire_at.is_none())
    {
        return (doc.clone(), pending.id);
    }
    let id = doc.keys.iter().map(|k| k.id).max().map_or(0, |m| m + 1);
    doc.keys.push(entry(id, new, false));
    trim(&mut doc.keys);
    (doc, id)
}

/// Drops the oldest retired keys beyond [`MAX_KEYS`].
fn trim(keys: &mut Vec<KeyEntry>) {
    while keys.len() > MAX_KEYS {
        let oldest = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.retire_at.is_some())
            .min_by_key(|(_, k)| k.retire_at)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => keys.remove(i),
            None => break,
        };
    }
}

/// A rotation's second step: key `id` signs; every other key is refused from
/// `retire_at` on (or earlier, if it already was); keys retired more than
/// [`RETIRED_KEPT_SECS`] before `now` are dropped, and the oldest retired
/// ones beyond [`MAX_KEYS`].
pub fn switch(doc: &KeysDoc, id: u32, now: u64, retire_at: u64) -> KeysDoc {
    let mut keys: Vec<KeyEntry> = doc
        .keys
        .iter()
        .cloned()
        .map(|mut k| {
            k.issuing = k.id == id;
            k.retire_at = match k.issuing {
                true => None,
                false => Some(k.retire_at.map_or(retire_at, |r| r.min(retire_at))),
            };
            k
        })
        .filter(|k| k.retire_at.is_none_or(|r| r + RETIRED_KEPT_SECS > now))
        .collect();
    trim(&mut keys);
    KeysDoc {
        schema: SCHEMA.into(),
        keys,
    }
}

/// What a rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    /// The key that signs now.
    pub id: u32,
    /// The other keys and the second each is refused from.
    pub retiring: Vec<(u32, u64)>,
}

/// Rotates the cluster's token keys (module text): stage a new random key,
/// wait `grace` for every node's watch, make it sign; the old keys are
/// refused `retire_after` seconds from now (a token lifetime; 0: at once, for
/// a key that leaked). Each write is compare-and-swap, tried again on a
/// conflict. `say` tells each step.
pub async fn rotate(
    store: &Store,
    file_key: &[u8; 32],
    retire_after: u64,
    grace: Duration,
    say: impl Fn(&str),
) -> Result<Rotated, Error> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut new = [0u8; 32];
    SystemRandom::new()
        .fill(&mut new)
        .map_err(|_| Error::TokenKeys {
            problem: "the system random generator failed".into(),
        })?;
    let id = edit(store, |doc| Ok(stage(doc, file_key, &new))).await?;
    say(&format!(
        "key {id} added: every node accepts it; waiting {} s for every node to see it before it signs logins",
        grace.as_secs_f64()
    ));
    tokio::time::sleep(grace).await;
    let now = upgrade::now();
    let doc = edit(store, |doc| {
        let doc = doc.ok_or_else(|| Error::TokenKeys {
            problem: "the token keys vanished during the rotation".into(),
        })?;
        if !doc.keys.iter().any(|k| k.id == id) {
            return Err(Error::TokenKeys {
                problem: format!("key {id} was replaced by another rotation"),
            });
        }
        let doc = switch(doc, id, now, now + retire_after);
        Ok((doc.clone(), doc))
    })
    .await?;
    let retiring = doc
        .keys
        .iter()
        .filter_map(|k| Some((k.id, k.retire_at?)))
        .collect();
    Ok(Rotated { id, retiring })
}

/// Applies `change` to the keys (`None`: none yet) and writes the result by
/// compare-and-swap, at most [`crate::accounts::CAS_TRIES`] times.
async fn edit<T>(
    store: &Store,
    change: impl Fn(Option<&KeysDoc>) -> Result<(KeysDoc, T), Error>,
) -> Result<T, Error> {
    for _ in 0..crate::accounts::CAS_TRIES {
        let current = store
            .doc::<KeysDoc>(SharedDoc::TokenKeys)
            .await
            .map_err(Error::Cluster)?;
        let (doc, out) = change(current.as_ref().map(|(d, _)| d))?;
        KeyRing::of(&doc)?;
        if store
            .put_doc_if(SharedDoc::TokenKeys, &doc, current.map(|(_, r)| r))
            .await
            .map_err(Error::Cluster)?
        {
            return Ok(out);
        }
    }
    Err(Error::Contended {
        what: "token keys",
        tries: crate::accounts::CAS_TRIES,
    })
}

#[cfg(test)]
mod tests;
