//! The node disk layout: which partitions, where, with which type GUIDs, names and
//! identifiers. Pure: computes a plan, writes nothing.
//!
//! | # | role | DPS type | name |
//! |---|---|---|---|
//! | 1 | ESP (FAT32) | `c12a7328-f81f-11d2-ba4b-00a0c93ec93b` | `esp` |
//! | 2 | root, slot A | root-x86-64 `4f68bce3-e8cd-4db1-96e7-fbcaf984b709` | `<product>_<version>` or `_empty` |
//! | 3 | verity, slot A | root-verity-x86-64 `2c7357ed-ebd2-46d9-aec1-23d437ec2bf5` | same as its root |
//! | 4 | root, slot B | root-x86-64 | |
//! | 5 | verity, slot B | root-verity-x86-64 | |
//! | 6 | data | Linux data `0fc63daf-8483-4772-8e79-3d69d8477de4` | `data` |
//!
//! Verity lives in its own partition (Discoverable Partitions Specification): a slot
//! written from a bundle gets the data area in its root partition and the hash area
//! in its verity partition, and the two partition UUIDs become the first and last
//! 128 bits of the verity root hash, so one UKI with `roothash=` on its command line
//! finds its root in whichever slot it was written to. Slot A is the root partition
//! with the lower start LBA. Sizes are fixed when the disk is laid out; everything is
//! aligned to 1 MiB. Every other identifier is derived from the product name and the
//! layout, so the same inputs give the same disk.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// EFI System Partition.
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
/// DPS root partition, x86-64.
pub const ROOT_TYPE: Uuid = Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);
/// DPS root verity partition, x86-64.
pub const VERITY_TYPE: Uuid = Uuid::from_u128(0x2c7357ed_ebd2_46d9_aec1_23d437ec2bf5);
/// Generic Linux data.
pub const DATA_TYPE: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);

/// GPT attribute bit 60: read-only (DPS, for root and verity partitions).
pub const ATTR_READ_ONLY: u64 = 1 << 60;
/// The name of an unused slot (systemd-sysupdate's convention).
pub const EMPTY: &str = "_empty";
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// Longest GPT partition name, in UTF-16 code units.
pub const MAX_NAME: usize = 36;

/// An A/B slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// The first root partition.
    A,
    /// The second root partition.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`.
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A slot name that is neither `a` nor `b`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a slot (a or b)")]
pub struct BadSlot(pub String);

impl std::str::FromStr for Slot {
    type Err = BadSlot;
    /// `a` or `b` (either case); anything else is refused, never mapped to a slot.
    fn from_str(s: &str) -> Result<Slot, BadSlot> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => Err(BadSlot(other.to_owned())),
        }
    }
}

impl serde::Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a partition is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The ESP.
    Esp,
    /// A slot's root filesystem.
    Root(Slot),
    /// A slot's dm-verity hash area.
    Verity(Slot),
    /// Node data.
    Data,
}

impl Role {
    /// The partition type GUID for the role.
    pub fn type_guid(self) -> Uuid {
        match self {
            Role::Esp => ESP_TYPE,
            Role::Root(_) => ROOT_TYPE,
            Role::Verity(_) => VERITY_TYPE,
            Role::Data => DATA_TYPE,
        }
    }
}

/// Sizes of a layout, fixed at first install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutSpec {
    /// Product name (part of slot labels and of derived identifiers).
    pub product: String,
    /// ESP size.
    pub esp_mib: u64,
    /// Each root partition's size.
    pub root_mib: u64,
    /// Each verity partition's size.
    pub verity_mib: u64,
    /// Smallest acceptable data partition.
    pub min_data_mib: u64,
}

/// One planned partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Its role.
    pub role: Role,
    /// First LBA (512-byte sectors).
    pub first_lba: u64,
    /// Last LBA, inclusive.
    pub last_lba: u64,
    /// Partition GUID.
    pub guid: Uuid,
    /// Name.
    pub name: String,
    /// Attribute bits.
    pub flags: u64,
}

/// A complete plan for a fresh disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// Partitions in table order.
    pub partitions: Vec<Planned>,
}

/// 16 bytes derived from labels, as a UUID (RFC 9562 version 8).
pub fn derive_uuid(parts: &[&[u8]]) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"qimg-layout-v1");
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b: [u8; 16] = d[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// The partition UUIDs DPS derives from a verity root hash: (root, verity).
pub fn uuids_from_root_hash(root_hash: &[u8; 32]) -> (Uuid, Uuid) {
    (
        Uuid::from_bytes(root_hash[..16].try_into().expect("16 bytes")),
        Uuid::from_bytes(root_hash[16..].try_into().expect("16 bytes")),
    )
}

/// The label of a slot holding `version` of `product`.
pub fn slot_label(product: &str, version: &str) -> Result<String, crate::Error> {
    let label = format!("{product}_{version}");
    if label.encode_utf16().count() > MAX_NAME {
        return Err(crate::Error::Layout {
            reason: format!("partition name {label:?} is longer than {MAX_NAME} characters"),
        });
    }
    Ok(label)
}

/// Splits a slot label `<product>_<version>` (the inverse of [`slot_label`]) at its
/// last `_`: versions have none. `None` for `_empty` and anything without both parts.
pub fn split_slot_label(label: &str) -> Option<(&str, &str)> {
    label
        .rsplit_once('_')
        .filter(|(p, v)| !p.is_empty() && !v.is_empty())
}

/// Sectors of 512 bytes.
pub const SECTOR: u64 = 512;
/// The partition entry array: 128 entries of 128 bytes.
const ARRAY_SECTORS: u64 = 128 * 128 / SECTOR;

impl LayoutSpec {
    /// Plans a fresh disk of `disk_bytes`. The data partition takes what is left,
    /// aligned down to 1 MiB.
    pub fn plan(&self, disk_bytes: u64) -> Result<Plan, crate::Error> {
        self.plan_checked(disk_bytes)
            .map_err(|reason| crate::Error::Layout { reason })
    }

    fn plan_checked(&self, disk_bytes: u64) -> Result<Plan, String> {
        if self.esp_mib < 32 || self.root_mib == 0 || self.verity_mib == 0 {
            return Err("the ESP needs at least 32 MiB (FAT32) and slots a non-zero size".into());
        }
        slot_label(&self.product, "0").map_err(|e| e.to_string())?;
        let sectors = disk_bytes / SECTOR;
        // Last usable LBA: before the backup array and header.
        let last_usable = sectors
            .checked_sub(1 + ARRAY_SECTORS + 1)
            .ok_or("disk too small for a GPT")?;
        let per_mib = MIB / SECTOR;
        let mut next = per_mib; // 1 MiB: after the PMBR, header and array
        let disk_guid = derive_uuid(&[b"disk", self.product.as_bytes()]);
        let mut partitions = Vec::new();
        let mut add = |role: Role, mib: u64, name: &str, flags: u64| {
            let first = next;
            let last = first + mib * per_mib - 1;
            next = last + 1;
            let role_label = format!("{role:?}");
            partitions.push(Planned {
                role,
                first_lba: first,
                last_lba: last,
                guid: derive_uuid(&[b"partition", disk_guid.as_bytes(), role_label.as_bytes()]),
                name: name.to_owned(),
                flags,
            });
        };
        add(Role::Esp, self.esp_mib, "esp", 0);
        for slot in [Slot::A, Slot::B] {
            add(Role::Root(slot), self.root_mib, EMPTY, ATTR_READ_ONLY);
            add(Role::Verity(slot), self.verity_mib, EMPTY, ATTR_READ_ONLY);
        }
        let data_first = next;
        let data_last = ((last_usable + 1) / per_mib) * per_mib - 1;
        if data_last < data_first
            || (data_last + 1 - data_first) / per_mib < self.min_data_mib.max(1)
        {
            return Err(format!(
                "a {disk_bytes}-byte disk leaves less than {} MiB for data",
                self.min_data_mib.max(1)
            ));
        }
        partitions.push(Planned {
            role: Role::Data,
            first_lba: data_first,
            last_lba: data_last,
            guid: derive_uuid(&[b"partition", disk_guid.as_bytes(), b"Data"]),
            name: "data".into(),
            flags: 0,
        });
        Ok(Plan {
            disk_guid,
            partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LayoutSpec {
        LayoutSpec {
            product: "qimg-demo".into(),
            esp_mib: 64,
            root_mib: 100,
            verity_mib: 4,
            min_data_mib: 8,
        }
    }

    #[test]
    fn plan_is_aligned_ordered_and_deterministic() {
        let p = spec().plan(512 * MIB).unwrap();
        assert_eq!(p, spec().plan(512 * MIB).unwrap());
        let roles: Vec<Role> = p.partitions.iter().map(|x| x.role).collect();
        assert_eq!(
            roles,
            [
                Role::Esp,
                Role::Root(Slot::A),
                Role::Verity(Slot::A),
                Role::Root(Slot::B),
                Role::Verity(Slot::B),
                Role::Data
            ]
        );
        let mut prev_end = 0;
        for x in &p.partitions {
            assert_eq!(x.first_lba % 2048, 0, "{x:?}");
            assert_eq!((x.last_lba + 1) % 2048, 0, "{x:?}");
            assert!(x.first_lba > prev_end);
            prev_end = x.last_lba;
        }
        // Data ends before the backup GPT (33 sectors at the end).
        assert!(prev_end < 512 * MIB / 512 - 33);
        let guids: std::collections::HashSet<_> = p.partitions.iter().map(|x| x.guid).collect();
        assert_eq!(guids.len(), 6);
        // A different product gives different identifiers.
        let mut other = spec();
        other.product = "other".into();
        assert_ne!(other.plan(512 * MIB).unwrap().disk_guid, p.disk_guid);
    }

    #[test]
    fn too_small_and_bad_names() {
        assert!(spec().plan(200 * MIB).is_err());
        let mut long = spec();
        long.product = "a-very-long-product-name-that-does-not-fit".into();
        assert!(long.plan(512 * MIB).is_err());
        assert_eq!(slot_label("qimg", "7.1.0").unwrap(), "qimg_7.1.0");
    }

    #[test]
    fn dps_uuids_from_the_root_hash() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[31] = 0xcd;
        let (root, verity) = uuids_from_root_hash(&h);
        assert_eq!(root.as_bytes()[0], 0xab);
        assert_eq!(verity.as_bytes()[15], 0xcd);
    }
}
