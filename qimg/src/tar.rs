//! The subset of POSIX ustar that a `.qimg` uses: regular-file members only.
//!
//! A header is one 512-byte block. Layout (POSIX.1-1988 ustar):
//!
//! | offset | size | field    | qimg writes                                   |
//! |-------:|-----:|----------|-----------------------------------------------|
//! | 0      | 100  | name     | member name, NUL-padded                       |
//! | 100    | 8    | mode     | `0000644\0`                                   |
//! | 108    | 8    | uid      | `0000000\0`                                   |
//! | 116    | 8    | gid      | `0000000\0`                                   |
//! | 124    | 12   | size     | 11 octal digits + NUL; GNU base-256 ≥ 8 GiB   |
//! | 136    | 12   | mtime    | SOURCE_DATE_EPOCH, 11 octal digits + NUL      |
//! | 148    | 8    | chksum   | 6 octal digits, NUL, space                    |
//! | 156    | 1    | typeflag | `0` (regular file)                            |
//! | 157    | 100  | linkname | zero                                          |
//! | 257    | 6    | magic    | `ustar\0`                                     |
//! | 263    | 2    | version  | `00`                                          |
//! | 265    | 32   | uname    | `root`                                        |
//! | 297    | 32   | gname    | `root`                                        |
//! | 329    | 8    | devmajor | zero                                          |
//! | 337    | 8    | devminor | zero                                          |
//! | 345    | 155  | prefix   | zero (names fit in `name`)                    |
//! | 500    | 12   | padding  | zero                                          |
//!
//! The checksum is the sum of all 512 header bytes as unsigned values, with the
//! checksum field counted as eight spaces.

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// tar's default record: archives are padded with zero blocks to a multiple of this.
pub const RECORD: u64 = 10240;
/// Longest member name that fits the `name` field.
pub const MAX_NAME: usize = 100;

const OFF_NAME: usize = 0;
const OFF_MODE: usize = 100;
const OFF_UID: usize = 108;
const OFF_GID: usize = 116;
const OFF_SIZE: usize = 124;
const OFF_MTIME: usize = 136;
const OFF_CHKSUM: usize = 148;
const OFF_TYPEFLAG: usize = 156;
const OFF_LINKNAME: usize = 157;
const OFF_MAGIC: usize = 257;
const OFF_VERSION: usize = 263;
const OFF_UNAME: usize = 265;
const OFF_GNAME: usize = 297;
const OFF_PREFIX: usize = 345;
const LEN_PREFIX: usize = 155;

/// A decoded member header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Member name (UTF-8, no NUL).
    pub name: String,
    /// Size of the member's data in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

/// Why a header block was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The stored checksum does not match the block.
    Checksum {
        /// Checksum field as stored.
        stored: u32,
        /// Checksum computed over the block.
        computed: u32,
    },
    /// A field is not encoded as ustar requires, or uses a feature qimg does not allow.
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Checksum { stored, computed } => write!(
                f,
                "header checksum mismatch: stored {stored:o}, computed {computed:o}"
            ),
            HeaderError::Field { field, reason } => write!(f, "field {field}: {reason}"),
        }
    }
}

fn checksum(block: &[u8; BLOCK]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (OFF_CHKSUM..OFF_CHKSUM + 8).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum()
}

/// Writes `value` as zero-padded octal filling `field.len() - 1` digits, then NUL.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    debug_assert_eq!(text.len(), digits, "value {value} does not fit");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn parse_octal(field: &[u8], name: &'static str) -> Result<u64, HeaderError> {
    let bad = |reason: &str| HeaderError::Field {
        field: name,
        reason: reason.to_owned(),
    };
    // Digits, then at least one NUL or space terminator; nothing after the terminator
    // but more NULs or spaces.
    let end = field
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .ok_or_else(|| bad("missing terminator"))?;
    if !field[end..].iter().all(|&b| b == 0 || b == b' ') {
        return Err(bad("bytes after terminator"));
    }
    let digits = &field[..end];
    if digits.is_empty() || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(bad("not an octal number"));
    }
    let text = std::str::from_utf8(digits).expect("octal digits are ascii");
    u64::from_str_radix(text, 8).map_err(|_| bad("number too large"))
}

fn parse_size(field: &[u8]) -> Result<u64, HeaderError> {
    if field[0] == 0x80 {
        // GNU base-256: the remaining bytes are a big-endian unsigned number.
        if field[1..4].iter().any(|&b| b != 0) {
            return Err(HeaderError::Field {
                field: "size",
                reason: "base-256 size too large".into(),
            });
        }
        let mut v = 0u64;
        for &b in &field[4..] {
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    } else {
        parse_octal(field, "size")
    }
}

fn put_size(field: &mut [u8], size: u64) {
    if size < 1 << 33 {
        put_octal(field, size);
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&size.to_be_bytes());
    }
}

fn put_str(field: &mut [u8], s: &str) {
    field[..s.len()].copy_from_slice(s.as_bytes());
}

impl Header {
    /// Encodes the header as qimg writes it. Panics if `name` is longer than
    /// [`MAX_NAME`] bytes (the writer validates names first).
    pub fn encode(&self) -> [u8; BLOCK] {
        assert!(self.name.len() <= MAX_NAME && !self.name.contains('\0'));
        let mut b = [0u8; BLOCK];
        put_str(&mut b[OFF_NAME..OFF_NAME + 100], &self.name);
        put_octal(&mut b[OFF_MODE..OFF_MODE + 8], 0o644);
        put_octal(&mut b[OFF_UID..OFF_UID + 8], 0);
        put_octal(&mut b[OFF_GID..OFF_GID + 8], 0);
        put_size(&mut b[OFF_SIZE..OFF_SIZE + 12], self.size);
        put_octal(&mut b[OFF_MTIME..OFF_MTIME + 12], self.mtime);
        b[OFF_TYPEFLAG] = b'0';
        b[OFF_MAGIC..OFF_MAGIC + 6].copy_from_slice(b"ustar\0");
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(b"00");
        put_str(&mut b[OFF_UNAME..OFF_UNAME + 32], "root");
        put_str(&mut b[OFF_GNAME..OFF_GNAME + 32], "root");
        let sum = checksum(&b);
        let text = format!("{sum:06o}\0 ");
        b[OFF_CHKSUM..OFF_CHKSUM + 8].copy_from_slice(text.as_bytes());
        b
    }

    /// Decodes and validates a header block: checksum, ustar magic, regular file,
    /// no link name, no prefix.
    pub fn decode(b: &[u8; BLOCK]) -> Result<Header, HeaderError> {
        let stored = parse_octal(&b[OFF_CHKSUM..OFF_CHKSUM + 8], "chksum")?;
        let computed = checksum(b);
        if stored != u64::from(computed) {
            return Err(HeaderError::Checksum {
                stored: stored.min(u64::from(u32::MAX)) as u32,
                computed,
            });
        }
        let field = |field: &'static str, reason: &str| HeaderError::Field {
            field,
            reason: reason.to_owned(),
        };
        if &b[OFF_MAGIC..OFF_MAGIC + 6] != b"ustar\0" || &b[OFF_VERSION..OFF_VERSION + 2] != b"00" {
            return Err(field("magic", "not a POSIX ustar header"));
        }
        match b[OFF_TYPEFLAG] {
            b'0' | 0 => {}
            t => {
                return Err(field(
                    "typeflag",
                    &format!("member type {:?} is not a regular file", t as char),
                ));
            }
        }
        if b[OFF_LINKNAME..OFF_LINKNAME + 100].iter().any(|&x| x != 0) {
            return Err(field("linkname", "must be empty"));
        }
        if b[OFF_PREFIX..OFF_PREFIX + LEN_PREFIX]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(field("prefix", "must be empty"));
        }
        let raw_name = &b[OFF_NAME..OFF_NAME + 100];
        let len = raw_name.iter().position(|&x| x == 0).unwrap_or(100);
        if raw_name[len..].iter().any(|&x| x != 0) {
            return Err(field("name", "bytes after the terminating NUL"));
        }
        let name = std::str::from_utf8(&raw_name[..len])
            .map_err(|_| field("name", "not UTF-8"))?
            .to_owned();
        Ok(Header {
            name,
            size: parse_size(&b[OFF_SIZE..OFF_SIZE + 12])?,
            mtime: parse_octal(&b[OFF_MTIME..OFF_MTIME + 12], "mtime")?,
        })
    }
}

/// Number of zero bytes that pad `len` bytes of member data to a whole block.
pub fn padding(len: u64) -> u64 {
    (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64
}

/// Checks that a member name is a safe relative path: not empty, no leading `/`,
/// no `.`/`..` or empty components, no backslash or NUL or control character.
pub fn check_member_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_NAME {
        return Err("longer than 100 bytes");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    if name.chars().any(|c| c == '\\' || c.is_control()) {
        return Err("backslash or control character");
    }
    for part in name.split('/') {
        match part {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` or `..` path component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoded_header_is_one_block_with_valid_checksum() {
        let h = Header {
            name: "manifest.json".into(),
            size: 1234,
            mtime: 1_700_000_000,
        };
        let b = h.encode();
        assert_eq!(b.len(), BLOCK);
        assert_eq!(&b[OFF_MAGIC..OFF_MAGIC + 6], b"ustar\0");
        assert_eq!(&b[OFF_SIZE..OFF_SIZE + 12], b"00000002322\0");
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn every_single_byte_flip_is_rejected_or_changes_the_header() {
        let h = Header {
            name: "payload/rootfs.zst".into(),
            size: 99,
            mtime: 5,
        };
        let b = h.encode();
        for i in 0..BLOCK {
            let mut c = b;
            c[i] ^= 0x01;
            assert!(Header::decode(&c).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn rejects_links_and_non_files() {
        let h = Header {
            name: "x".into(),
            size: 0,
            mtime: 0,
        };
        let mut b = h.encode();
        b[OFF_TYPEFLAG] = b'2';
        // fix the checksum so the type check is what fails
        let sum = format!("{:06o}\0 ", checksum(&b));
        b[OFF_CHKSUM..OFF_CHKSUM + 8].copy_from_slice(sum.as_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(HeaderError::Field {
                field: "typeflag",
                ..
            })
        ));
    }

    #[test]
    fn member_names() {
        assert!(check_member_name("payload/rootfs.zst").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\\b",
        ] {
            assert!(check_member_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn header_round_trip(name in "[a-z0-9._-]{1,40}(/[a-z0-9._-]{1,40})?",
                             size in any::<u64>(), mtime in 0u64..(1 << 33)) {
            let h = Header { name, size, mtime };
            prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn padding_completes_a_block(len in 0u64..1 << 40) {
            let p = padding(len);
            prop_assert!(p < BLOCK as u64);
            prop_assert_eq!((len + p) % BLOCK as u64, 0);
        }
    }
}
