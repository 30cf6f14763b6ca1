//! Ed25519 keys and signatures in minisign's file formats.
//!
//! qimg signs the exact manifest bytes with Ed25519 (minisign's "legacy" `Ed`
//! algorithm, which `minisign -V` accepts), so a signature member extracted from a
//! bundle can be checked by hand with the stock `minisign` tool. Binary layouts,
//! each base64-encoded on one line of the file:
//!
//! Public key (`.pub`), 42 bytes:
//!
//! | offset | size | field                       |
//! |-------:|-----:|-----------------------------|
//! | 0      | 2    | algorithm `Ed`              |
//! | 2      | 8    | key id (little-endian u64)  |
//! | 10     | 32   | Ed25519 public key          |
//!
//! Secret key (`.key`, unencrypted as `minisign -W` writes it), 158 bytes:
//!
//! | offset | size | field                                          |
//! |-------:|-----:|------------------------------------------------|
//! | 0      | 2    | algorithm `Ed`                                 |
//! | 2      | 2    | KDF algorithm, `00 00` = none                  |
//! | 4      | 2    | checksum algorithm `B2`                        |
//! | 6      | 32   | KDF salt (zero)                                |
//! | 38     | 8    | KDF opslimit (zero)                            |
//! | 46     | 8    | KDF memlimit (zero)                            |
//! | 54     | 8    | key id                                         |
//! | 62     | 64   | Ed25519 seed ‖ public key                      |
//! | 126    | 32   | BLAKE2b-256(algorithm ‖ key id ‖ secret key)   |
//!
//! (minisign writes zeros in the checksum of unencrypted keys and never checks it;
//! qimg writes the real checksum and accepts either.)
//!
//! Signature (`.minisig`): four lines, `untrusted comment: …`, base64 of 74 bytes
//! (`Ed`, key id, 64-byte signature over the message), `trusted comment: …`,
//! base64 of the 64-byte global signature over (signature ‖ trusted comment).

use crate::Invalid;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::{Blake2b256, Digest};
use ed25519_dalek::{Signature as EdSignature, Signer, SigningKey, VerifyingKey};

use crate::Error;

const ALG_ED: [u8; 2] = *b"Ed";
const KDF_NONE: [u8; 2] = [0, 0];
const CHK_B2: [u8; 2] = *b"B2";
const PUBLIC_LEN: usize = 42;
const SECRET_LEN: usize = 158;
const SIG_LEN: usize = 74;

/// Name of the bundle member holding the signature by `key_id`.
pub fn signature_member(key_id: KeyId) -> String {
    format!("signatures/{key_id}.minisig")
}

/// Longest trusted comment qimg writes or accepts.
pub const MAX_TRUSTED_COMMENT: usize = 1024;

/// An 8-byte key identifier, shown as minisign shows it: 16 upper-case hex digits
/// of the little-endian number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            return Err(());
        }
        let n = u64::from_str_radix(s, 16).map_err(|_| ())?;
        Ok(KeyId(n.to_le_bytes()))
    }
}

/// A public key that can verify signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// Key id.
    pub id: KeyId,
    key: VerifyingKey,
}

/// A secret signing key.
pub struct SecretKey {
    /// Key id.
    pub id: KeyId,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn key_err(reason: impl Into<String>) -> Error {
    Error::MalformedKey {
        reason: reason.into(),
    }
}

/// Splits a minisign-style file into its `untrusted comment:` line and base64 payload line.
fn two_lines(text: &str, what: &str) -> Result<Vec<u8>, Error> {
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or_default();
    if !comment.starts_with("untrusted comment: ") {
        return Err(key_err(format!(
            "{what}: first line is not an untrusted comment"
        )));
    }
    let data = lines
        .next()
        .ok_or_else(|| key_err(format!("{what}: missing key line")))?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(key_err(format!("{what}: unexpected extra lines")));
    }
    B64.decode(data.trim())
        .map_err(|_| key_err(format!("{what}: key line is not base64")))
}

impl SecretKey {
    /// Generates a new key pair from the operating system's random source.
    pub fn generate() -> Result<SecretKey, Error> {
        let mut seed = [0u8; 32];
        let mut id = [0u8; 8];
        getrandom::fill(&mut seed)
            .and_then(|()| getrandom::fill(&mut id))
            .map_err(|e| key_err(format!("no random source: {e}")))?;
        Ok(SecretKey {
            id: KeyId(id),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Builds a key from a 32-byte seed and key id (deterministic; for tests and fixtures).
    pub fn from_seed(seed: [u8; 32], id: KeyId) -> SecretKey {
        SecretKey {
            id,
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    fn checksum(&self) -> [u8; 32] {
        let mut h = Blake2b256::new();
        h.update(ALG_ED);
        h.update(self.id.0);
        h.update(self.key.to_keypair_bytes());
        h.finalize().into()
    }

    /// Encodes the unencrypted minisign secret-key file.
    pub fn to_file_text(&self) -> String {
        let mut b = Vec::with_capacity(SECRET_LEN);
        b.extend_from_slice(&ALG_ED); // offset 0
        b.extend_from_slice(&KDF_NONE); // offset 2
        b.extend_from_slice(&CHK_B2); // offset 4
        b.extend_from_slice(&[0u8; 32 + 8 + 8]); // offset 6: salt, opslimit, memlimit
        b.extend_from_slice(&self.id.0); // offset 54
        b.extend_from_slice(&self.key.to_keypair_bytes()); // offset 62
        b.extend_from_slice(&self.checksum()); // offset 126
        debug_assert_eq!(b.len(), SECRET_LEN);
        format!(
            "untrusted comment: minisign encrypted secret key\n{}\n",
            B64.encode(b)
        )
    }

    /// Decodes an unencrypted minisign secret-key file and checks its checksum.
    pub fn from_file_text(text: &str) -> Result<SecretKey, Error> {
        let b = two_lines(text, "secret key")?;
        if b.len() != SECRET_LEN {
            return Err(key_err(format!(
                "secret key: {} bytes, expected {SECRET_LEN}",
                b.len()
            )));
        }
        if b[0..2] != ALG_ED {
            return Err(key_err("secret key: algorithm is not Ed25519"));
        }
        if b[2..4] != KDF_NONE {
            return Err(key_err(
                "secret key is password-protected; qimg needs an unencrypted key (minisign -C -W removes the password)",
            ));
        }
        if b[4..6] != CHK_B2 {
            return Err(key_err("secret key: unknown checksum algorithm"));
        }
        let id = KeyId(b[54..62].try_into().expect("8 bytes"));
        let pair: [u8; 64] = b[62..126].try_into().expect("64 bytes");
        let key = SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| key_err("secret key: seed and public half do not match"))?;
        let sk = SecretKey { id, key };
        // minisign only checks the checksum when it decrypts a key, and for
        // unencrypted keys (`-W`) it stores zeros; accept those, reject a wrong one.
        // The seed/public-key consistency check above still guards the key itself.
        let stored = &b[126..158];
        if stored.iter().any(|&x| x != 0) && sk.checksum()[..] != *stored {
            return Err(key_err("secret key: checksum mismatch"));
        }
        Ok(sk)
    }

    /// Signs `message` and returns a minisign signature with the given trusted comment.
    pub fn sign(&self, message: &[u8], trusted_comment: &str) -> Signature {
        assert!(
            trusted_comment.len() <= MAX_TRUSTED_COMMENT && !trusted_comment.contains('\n'),
            "trusted comment must be one short line"
        );
        let sig = self.key.sign(message).to_bytes();
        let mut global_msg = sig.to_vec();
        global_msg.extend_from_slice(trusted_comment.as_bytes());
        let global = self.key.sign(&global_msg).to_bytes();
        Signature {
            key_id: self.id,
            signature: sig,
            trusted_comment: trusted_comment.to_owned(),
            global_signature: global,
        }
    }
}

impl PublicKey {
    /// Encodes the minisign public-key file.
    pub fn to_file_text(&self) -> String {
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.id,
            self.to_base64()
        )
    }

    /// The one-line base64 form (what `minisign -P` takes).
    pub fn to_base64(&self) -> String {
        let mut b = Vec::with_capacity(PUBLIC_LEN);
        b.extend_from_slice(&ALG_ED); // offset 0
        b.extend_from_slice(&self.id.0); // offset 2
        b.extend_from_slice(self.key.as_bytes()); // offset 10
        B64.encode(b)
    }

    /// Decodes a minisign public-key file.
    pub fn from_file_text(text: &str) -> Result<PublicKey, Error> {
        let b = two_lines(text, "public key")?;
        if b.len() != PUBLIC_LEN || b[0..2] != ALG_ED {
            return Err(key_err("public key: not a minisign Ed25519 public key"));
        }
        let key = VerifyingKey::from_bytes(&b[10..42].try_into().expect("32 bytes"))
            .map_err(|_| key_err("public key: not a valid Ed25519 point"))?;
        Ok(PublicKey {
            id: KeyId(b[2..10].try_into().expect("8 bytes")),
            key,
        })
    }

    /// Checks `sig` over `message`: key id, the signature and the global signature
    /// over the trusted comment.
    pub fn verify(&self, message: &[u8], sig: &Signature) -> Result<(), Error> {
        let bad = |reason: &str| Error::BadSignature {
            key_id: sig.key_id,
            reason: reason.to_owned(),
        };
        if sig.key_id != self.id {
            return Err(bad("signature was made by another key"));
        }
        self.key
            .verify_strict(message, &EdSignature::from_bytes(&sig.signature))
            .map_err(|_| bad("signature does not match the manifest"))?;
        let mut global_msg = sig.signature.to_vec();
        global_msg.extend_from_slice(sig.trusted_comment.as_bytes());
        self.key
            .verify_strict(&global_msg, &EdSignature::from_bytes(&sig.global_signature))
            .map_err(|_| bad("global signature does not match the trusted comment"))
    }
}

/// A decoded minisign signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Id of the key that made it.
    pub key_id: KeyId,
    /// Ed25519 signature over the message.
    pub signature: [u8; 64],
    /// Text covered by the global signature.
    pub trusted_comment: String,
    /// Ed25519 signature over `signature ‖ trusted_comment`.
    pub global_signature: [u8; 64],
}

impl Signature {
    /// The untrusted comment qimg writes. Readers require exactly this text, so that
    /// every byte of a bundle is covered by some check.
    pub fn untrusted_comment(&self) -> String {
        format!(
            "untrusted comment: qimg manifest signature by key {}",
            self.key_id
        )
    }

    /// Encodes the `.minisig` file.
    pub fn to_file_text(&self) -> String {
        let mut b = Vec::with_capacity(SIG_LEN);
        b.extend_from_slice(&ALG_ED); // offset 0
        b.extend_from_slice(&self.key_id.0); // offset 2
        b.extend_from_slice(&self.signature); // offset 10
        format!(
            "{}\n{}\ntrusted comment: {}\n{}\n",
            self.untrusted_comment(),
            B64.encode(b),
            self.trusted_comment,
            B64.encode(self.global_signature)
        )
    }

    /// Decodes a `.minisig` file as qimg writes it; anything else is rejected
    /// (the text must re-encode to exactly the same bytes).
    pub fn from_file_text(text: &str) -> Result<Signature, Invalid> {
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() != 5 || !lines[4].is_empty() {
            return Err(Invalid("expected four newline-terminated lines".into()));
        }
        let b = B64
            .decode(lines[1])
            .map_err(|_| "signature line is not base64".to_owned())?;
        if b.len() != SIG_LEN {
            return Err(Invalid(format!(
                "signature is {} bytes, expected {SIG_LEN}",
                b.len()
            )));
        }
        if b[0..2] != ALG_ED {
            return Err(Invalid("algorithm is not legacy Ed25519 (`Ed`)".into()));
        }
        let trusted_comment = lines[2]
            .strip_prefix("trusted comment: ")
            .ok_or_else(|| "third line is not a trusted comment".to_owned())?;
        if trusted_comment.len() > MAX_TRUSTED_COMMENT {
            return Err(Invalid("trusted comment too long".into()));
        }
        let g = B64
            .decode(lines[3])
            .map_err(|_| "global signature is not base64".to_owned())?;
        let global_signature: [u8; 64] = g
            .try_into()
            .map_err(|_| "global signature is not 64 bytes".to_owned())?;
        let sig = Signature {
            key_id: KeyId(b[2..10].try_into().expect("8 bytes")),
            signature: b[10..74].try_into().expect("64 bytes"),
            trusted_comment: trusted_comment.to_owned(),
            global_signature,
        };
        if sig.to_file_text() != text {
            return Err(Invalid(
                "not in canonical form (comment or encoding differs)".into(),
            ));
        }
        Ok(sig)
    }
}

/// The public keys a reader trusts.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// A set of trusted keys.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        TrustedKeys {
            keys: keys.into_iter().collect(),
        }
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the signatures over `message`. Succeeds when at least one signature is
    /// by a trusted key and every signature by a trusted key verifies; signatures by
    /// unknown keys are ignored (they let a bundle carry old and new keys during a
    /// rotation). Returns the ids of the keys that verified.
    pub fn verify(&self, message: &[u8], sigs: &[Signature]) -> Result<Vec<KeyId>, Error> {
        if sigs.is_empty() {
            return Err(Error::Unsigned);
        }
        let mut good = Vec::new();
        for sig in sigs {
            if let Some(key) = self.get(sig.key_id) {
                key.verify(message, sig)?;
                good.push(sig.key_id);
            }
        }
        if good.is_empty() {
            return Err(Error::NoTrustedSignature {
                key_ids: sigs.iter().map(|s| s.key_id).collect(),
            });
        }
        Ok(good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32], KeyId([n; 8]))
    }

    #[test]
    fn key_files_round_trip() {
        let sk = key(1);
        let again = SecretKey::from_file_text(&sk.to_file_text()).unwrap();
        assert_eq!(again.id, sk.id);
        assert_eq!(again.public(), sk.public());
        let pk = PublicKey::from_file_text(&sk.public().to_file_text()).unwrap();
        assert_eq!(pk, sk.public());
    }

    #[test]
    fn secret_key_checksum_is_verified() {
        let text = key(2).to_file_text();
        let mut b = B64.decode(text.lines().nth(1).unwrap()).unwrap();
        b[130] ^= 1;
        let bad = format!("untrusted comment: x\n{}\n", B64.encode(b));
        let err = SecretKey::from_file_text(&bad).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn zero_checksum_as_minisign_writes_it_is_accepted() {
        let text = key(6).to_file_text();
        let mut b = B64.decode(text.lines().nth(1).unwrap()).unwrap();
        b[126..158].fill(0);
        let zeroed = format!("untrusted comment: x\n{}\n", B64.encode(&b));
        assert_eq!(
            SecretKey::from_file_text(&zeroed).unwrap().public(),
            key(6).public()
        );
        // but a public half that does not match the seed is refused
        b[100] ^= 1;
        let bad = format!("untrusted comment: x\n{}\n", B64.encode(&b));
        assert!(SecretKey::from_file_text(&bad).is_err());
    }

    #[test]
    fn sign_verify_and_tamper() {
        let sk = key(3);
        let sig = sk.sign(b"manifest", "timestamp:1\tfile:manifest.json");
        let text = sig.to_file_text();
        assert_eq!(Signature::from_file_text(&text).unwrap(), sig);
        let trusted = TrustedKeys::new([sk.public()]);
        assert_eq!(
            trusted
                .verify(b"manifest", std::slice::from_ref(&sig))
                .unwrap(),
            vec![sk.id]
        );
        assert!(matches!(
            trusted.verify(b"manifesT", std::slice::from_ref(&sig)),
            Err(Error::BadSignature { .. })
        ));
        let mut other = sig.clone();
        other.trusted_comment.push('x');
        assert!(matches!(
            trusted.verify(b"manifest", &[other]),
            Err(Error::BadSignature { .. })
        ));
        assert!(matches!(
            trusted.verify(b"manifest", &[]),
            Err(Error::Unsigned)
        ));
        let stranger = TrustedKeys::new([key(4).public()]);
        assert!(matches!(
            stranger.verify(b"manifest", &[sig]),
            Err(Error::NoTrustedSignature { .. })
        ));
    }

    #[test]
    fn every_byte_flip_in_a_signature_file_is_caught() {
        let sk = key(5);
        let trusted = TrustedKeys::new([sk.public()]);
        let text = sk.sign(b"m", "c").to_file_text();
        for i in 0..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] ^= 0x01;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            let caught = match Signature::from_file_text(&t) {
                Err(_) => true,
                Ok(sig) => trusted.verify(b"m", &[sig]).is_err(),
            };
            assert!(caught, "flip at {i} not detected");
        }
    }

    #[test]
    fn key_id_display_matches_minisign() {
        // minisign prints the little-endian u64
        let id = KeyId([0x40, 0x12, 0xc8, 0x6f, 0xcc, 0x26, 0x82, 0x5a]);
        assert_eq!(id.to_string(), "5A8226CC6FC81240");
        assert_eq!("5A8226CC6FC81240".parse::<KeyId>().unwrap(), id);
    }
}
