//! Building Unified Kernel Images: the distribution's systemd EFI stub plus `.osrel`,
//! `.cmdline`, `.linux`, `.initrd` and `.uname` sections (UAPI.5), written in Rust.
//!
//! The stub's headers and sections are kept byte for byte; new section headers go
//! into the free space of the header area (the stub reserves `SizeOfHeaders`), their
//! data after the stub's last section. The stub's COFF symbol table (after its last
//! section) is dropped and its pointer cleared. `NumberOfSections`, `SizeOfImage`,
//! `SizeOfInitializedData` and the checksum are updated.
//!
//! PE/COFF structures used (offsets from the start of each structure):
//!
//! DOS header: `0x00` `MZ`; `0x3c` u32 offset of the PE signature.
//!
//! COFF file header (after the 4-byte `PE\0\0`):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 2 | Machine (`0x8664` x86-64) |
//! | 2 | 2 | NumberOfSections |
//! | 4 | 4 | TimeDateStamp |
//! | 8 | 4 | PointerToSymbolTable |
//! | 12 | 4 | NumberOfSymbols |
//! | 16 | 2 | SizeOfOptionalHeader |
//! | 18 | 2 | Characteristics |
//!
//! PE32+ optional header (fields used): `0` Magic `0x20b`; `8` SizeOfInitializedData;
//! `32` SectionAlignment; `36` FileAlignment; `56` SizeOfImage; `60` SizeOfHeaders;
//! `64` CheckSum; `68` Subsystem (10 = EFI application).
//!
//! Section header (40 bytes): `0` Name\[8\]; `8` VirtualSize; `12` VirtualAddress;
//! `16` SizeOfRawData; `20` PointerToRawData; `24` PointerToRelocations; `28`
//! PointerToLinenumbers; `32` NumberOfRelocations (u16); `34` NumberOfLinenumbers
//! (u16); `36` Characteristics.

use std::path::Path;

use crate::Error;

const SECTION_HEADER: usize = 40;
/// Initialized data, readable.
const DATA_CHARACTERISTICS: u32 = 0x4000_0040;
/// New sections start on 4 KiB boundaries in memory.
const VA_ALIGN: u32 = 4096;
/// The sections this builder adds, in the order it writes them.
pub const UKI_SECTIONS: [&str; 5] = [".osrel", ".cmdline", ".linux", ".initrd", ".uname"];

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// One section header, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionHeader {
    /// Name, NUL padding removed.
    pub name: String,
    /// VirtualSize.
    pub virtual_size: u32,
    /// VirtualAddress.
    pub virtual_address: u32,
    /// SizeOfRawData.
    pub raw_size: u32,
    /// PointerToRawData.
    pub raw_pointer: u32,
    /// Characteristics.
    pub characteristics: u32,
}

impl SectionHeader {
    fn decode(b: &[u8]) -> SectionHeader {
        let name = &b[0..8];
        let end = name.iter().position(|&c| c == 0).unwrap_or(8);
        SectionHeader {
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            virtual_size: le32(b, 8),
            virtual_address: le32(b, 12),
            raw_size: le32(b, 16),
            raw_pointer: le32(b, 20),
            characteristics: le32(b, 36),
        }
    }

    fn encode(&self) -> [u8; SECTION_HEADER] {
        let mut b = [0u8; SECTION_HEADER];
        b[..self.name.len()].copy_from_slice(self.name.as_bytes()); // 0: Name
        put32(&mut b, 8, self.virtual_size); // 8
        put32(&mut b, 12, self.virtual_address); // 12
        put32(&mut b, 16, self.raw_size); // 16
        put32(&mut b, 20, self.raw_pointer); // 20
        // 24..36: relocations and line numbers: none
        put32(&mut b, 36, self.characteristics); // 36
        b
    }
}

/// The parts of a PE32+ image this builder reads and rewrites.
struct Pe {
    coff: usize,
    opt: usize,
    sections: Vec<SectionHeader>,
    section_table: usize,
    section_alignment: u32,
    file_alignment: u32,
    size_of_headers: u32,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::NotUki {
        reason: reason.into(),
    }
}

fn parse(b: &[u8]) -> Result<Pe, Error> {
    if b.len() < 0x40 || &b[0..2] != b"MZ" {
        return Err(bad("the stub is not a PE file (no MZ header)"));
    }
    let pe = le32(b, 0x3c) as usize;
    if b.len() < pe + 24 || &b[pe..pe + 4] != b"PE\0\0" {
        return Err(bad("the stub is not a PE file (no PE signature)"));
    }
    let coff = pe + 4;
    if le16(b, coff) != 0x8664 {
        return Err(bad("the stub is not an x86-64 image"));
    }
    let n = le16(b, coff + 2) as usize;
    let opt_size = le16(b, coff + 16) as usize;
    let opt = coff + 20;
    if b.len() < opt + opt_size || opt_size < 72 || le16(b, opt) != 0x20b {
        return Err(bad("the stub is not PE32+"));
    }
    if le16(b, opt + 68) != 10 {
        return Err(bad("the stub is not an EFI application (subsystem 10)"));
    }
    let section_table = opt + opt_size;
    if b.len() < section_table + n * SECTION_HEADER {
        return Err(bad("the stub's section table is truncated"));
    }
    let sections = (0..n)
        .map(|i| SectionHeader::decode(&b[section_table + i * SECTION_HEADER..]))
        .collect();
    Ok(Pe {
        coff,
        opt,
        sections,
        section_table,
        section_alignment: le32(b, opt + 32),
        file_alignment: le32(b, opt + 36),
        size_of_headers: le32(b, opt + 60),
    })
}

/// The PE checksum (the algorithm of `IMAGEHLP CheckSumMappedFile`): 16-bit
/// one's-complement-style sum of the file with the checksum field as zero, plus the
/// file length.
fn pe_checksum(b: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in b.chunks(2).enumerate() {
        if i * 2 == checksum_at || i * 2 == checksum_at + 2 {
            continue;
        }
        let w = if chunk.len() == 2 {
            u16::from_le_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0])
        };
        sum += u64::from(w);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(b.len() as u32)
}

/// The kernel release (`uname -r`) from an x86 bzImage's setup header, if present.
pub fn kernel_release(kernel: &[u8]) -> Option<String> {
    // Setup header: 0x202 "HdrS"; 0x20e u16 offset (from 0x200) of the version string.
    if kernel.len() < 0x210 || &kernel[0x202..0x206] != b"HdrS" {
        return None;
    }
    let at = 0x200 + le16(kernel, 0x20e) as usize;
    let text = kernel.get(at..at + 256)?;
    let end = text.iter().position(|&c| c == 0 || c == b' ')?;
    let s = std::str::from_utf8(&text[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_owned())
}

/// Inputs of a UKI.
#[derive(Clone, Debug)]
pub struct UkiInputs {
    /// The systemd EFI stub (`linuxx64.efi.stub`).
    pub stub: Vec<u8>,
    /// os-release text for `.osrel`.
    pub osrel: Vec<u8>,
    /// Kernel command line for `.cmdline`.
    pub cmdline: String,
    /// The kernel (`.linux`).
    pub kernel: Vec<u8>,
    /// The initrd (`.initrd`), if any.
    pub initrd: Option<Vec<u8>>,
    /// `.uname`; read from the kernel's setup header when `None`.
    pub uname: Option<String>,
}

/// Builds a UKI in memory.
pub fn build(inp: &UkiInputs) -> Result<Vec<u8>, Error> {
    let b = &inp.stub;
    let pe = parse(b)?;
    if !pe.sections.iter().any(|s| s.name == ".sdmagic") {
        return Err(bad("the stub has no .sdmagic section: not a systemd stub"));
    }
    if let Some(s) = pe
        .sections
        .iter()
        .find(|s| UKI_SECTIONS.contains(&s.name.as_str()))
    {
        return Err(bad(format!(
            "the stub already has a {} section (is it a UKI?)",
            s.name
        )));
    }
    if inp.kernel.is_empty() {
        return Err(bad("the kernel is empty"));
    }
    let uname = inp.uname.clone().or_else(|| kernel_release(&inp.kernel));
    let mut parts: Vec<(&str, &[u8])> = vec![
        (".osrel", &inp.osrel),
        (".cmdline", inp.cmdline.as_bytes()),
        (".linux", &inp.kernel),
    ];
    if let Some(initrd) = &inp.initrd {
        parts.push((".initrd", initrd));
    }
    if let Some(u) = &uname {
        parts.push((".uname", u.as_bytes()));
    }
    let table_end = pe.section_table + (pe.sections.len() + parts.len()) * SECTION_HEADER;
    if table_end > pe.size_of_headers as usize {
        return Err(bad(
            "no room for the new section headers in the stub's header area",
        ));
    }
    let fa = u64::from(pe.file_alignment.max(1));
    let sa = u64::from(pe.section_alignment.max(1));
    // The stub's content ends with its last section's raw data; the symbol table after
    // it is dropped.
    let raw_end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.raw_pointer) + u64::from(s.raw_size))
        .max()
        .unwrap_or(u64::from(pe.size_of_headers));
    let mut va_end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .max()
        .unwrap_or(0);
    let mut out = b[..raw_end as usize].to_vec();
    out.resize(align(raw_end, fa) as usize, 0);
    let mut new_headers = Vec::new();
    let mut added_init = 0u64;
    for (name, data) in parts {
        let va = align(va_end, u64::from(VA_ALIGN).max(sa));
        let raw_pointer = out.len() as u64;
        let raw_size = align(data.len() as u64, fa);
        let too_big = |what| bad(format!("{name}: {what} does not fit a PE32+ image"));
        let h = SectionHeader {
            name: name.to_owned(),
            virtual_size: u32::try_from(data.len()).map_err(|_| too_big("size"))?,
            virtual_address: u32::try_from(va).map_err(|_| too_big("address"))?,
            raw_size: u32::try_from(raw_size).map_err(|_| too_big("size"))?,
            raw_pointer: u32::try_from(raw_pointer).map_err(|_| too_big("offset"))?,
            characteristics: DATA_CHARACTERISTICS,
        };
        out.extend_from_slice(data);
        out.resize((raw_pointer + raw_size) as usize, 0);
        va_end = va + data.len() as u64;
        added_init += raw_size;
        new_headers.push(h);
    }
    let first_new = pe.section_table + pe.sections.len() * SECTION_HEADER;
    for (i, h) in new_headers.iter().enumerate() {
        let at = first_new + i * SECTION_HEADER;
        out[at..at + SECTION_HEADER].copy_from_slice(&h.encode());
    }
    let n = (pe.sections.len() + new_headers.len()) as u16;
    put16(&mut out, pe.coff + 2, n); // NumberOfSections
    put32(&mut out, pe.coff + 8, 0); // PointerToSymbolTable: dropped
    put32(&mut out, pe.coff + 12, 0); // NumberOfSymbols
    let init = u64::from(le32(&out, pe.opt + 8)) + added_init;
    put32(
        &mut out,
        pe.opt + 8,
        u32::try_from(init).unwrap_or(u32::MAX),
    ); // SizeOfInitializedData
    let size_of_image = u32::try_from(align(va_end, sa)).map_err(|_| bad("image too large"))?;
    put32(&mut out, pe.opt + 56, size_of_image); // SizeOfImage
    put32(&mut out, pe.opt + 64, 0);
    let sum = pe_checksum(&out, pe.opt + 64);
    put32(&mut out, pe.opt + 64, sum); // CheckSum
    Ok(out)
}

/// Builds a UKI from files and writes it atomically to `out`.
pub fn build_files(
    stub: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    osrel: &Path,
    cmdline: &str,
    uname: Option<String>,
    out: &Path,
) -> Result<Vec<SectionHeader>, Error> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::File {
            path: p.to_owned(),
            source,
        })
    };
    let inputs = UkiInputs {
        stub: read(stub)?,
        osrel: read(osrel)?,
        cmdline: cmdline.to_owned(),
        kernel: read(kernel)?,
        initrd: initrd.map(read).transpose()?,
        uname,
    };
    let bytes = build(&inputs)?;
    qutil::fs::write_atomic(out, &bytes).map_err(|source| Error::File {
        path: out.to_owned(),
        source,
    })?;
    sections(&bytes)
}

/// The section headers of a PE image.
pub fn sections(b: &[u8]) -> Result<Vec<SectionHeader>, Error> {
    Ok(parse(b)?.sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ EFI application shaped like the systemd stub: headers, two
    /// sections (.text, .sdmagic) and a trailing symbol table.
    pub(crate) fn fake_stub() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        put32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put16(&mut b, coff, 0x8664);
        put16(&mut b, coff + 2, 2);
        put32(&mut b, coff + 8, 0x800); // symbol table pointer
        put32(&mut b, coff + 12, 3);
        put16(&mut b, coff + 16, 240);
        let opt = coff + 20;
        put16(&mut b, opt, 0x20b);
        put32(&mut b, opt + 32, 0x200);
        put32(&mut b, opt + 36, 0x200);
        put32(&mut b, opt + 56, 0x2000);
        put32(&mut b, opt + 60, 0x400);
        put16(&mut b, opt + 68, 10);
        let table = opt + 240;
        let text = SectionHeader {
            name: ".text".into(),
            virtual_size: 0x100,
            virtual_address: 0x1000,
            raw_size: 0x200,
            raw_pointer: 0x400,
            characteristics: 0x6000_0020,
        };
        let magic = SectionHeader {
            name: ".sdmagic".into(),
            virtual_size: 0x20,
            virtual_address: 0x1200,
            raw_size: 0x200,
            raw_pointer: 0x600,
            characteristics: DATA_CHARACTERISTICS,
        };
        b[table..table + 40].copy_from_slice(&text.encode());
        b[table + 40..table + 80].copy_from_slice(&magic.encode());
        b.resize(0x800, 0xcc);
        b.extend_from_slice(&[0x5a; 54]); // symbol table
        b
    }

    fn inputs() -> UkiInputs {
        let mut kernel = vec![0u8; 0x1000];
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut kernel, 0x20e, 0x300);
        kernel[0x500..0x51f].copy_from_slice(b"6.1.0-56-amd64 (debian@x) #1 SM");
        UkiInputs {
            stub: fake_stub(),
            osrel: b"ID=demo\nIMAGE_VERSION=1.0\n".to_vec(),
            cmdline: "console=ttyS0".into(),
            kernel,
            initrd: Some(vec![7u8; 3000]),
            uname: None,
        }
    }

    #[test]
    fn sections_in_order_aligned_and_sized() {
        let out = build(&inputs()).unwrap();
        let s = sections(&out).unwrap();
        let names: Vec<&str> = s.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".text", ".sdmagic", ".osrel", ".cmdline", ".linux", ".initrd", ".uname"
            ]
        );
        let pe = parse(&out).unwrap();
        for x in &s[2..] {
            assert_eq!(x.virtual_address % VA_ALIGN, 0, "{x:?}");
            assert_eq!(x.raw_pointer % pe.file_alignment, 0, "{x:?}");
            assert_eq!(x.raw_size % pe.file_alignment, 0, "{x:?}");
            assert!(x.raw_size >= x.virtual_size);
        }
        let linux = &s[4];
        let data = &out[linux.raw_pointer as usize..][..linux.virtual_size as usize];
        assert_eq!(data, &inputs().kernel[..]);
        let uname = &s[6];
        assert_eq!(
            &out[uname.raw_pointer as usize..][..uname.virtual_size as usize],
            b"6.1.0-56-amd64"
        );
        // Symbol table dropped, image size covers the last section, checksum valid.
        assert_eq!(le32(&out, pe.coff + 8), 0);
        let last = s.last().unwrap();
        assert!(le32(&out, pe.opt + 56) >= last.virtual_address + last.virtual_size);
        assert_eq!(le32(&out, pe.opt + 64), pe_checksum(&out, pe.opt + 64));
        // Deterministic.
        assert_eq!(out, build(&inputs()).unwrap());
    }

    #[test]
    fn refuses_what_is_not_a_systemd_stub() {
        let mut i = inputs();
        i.stub = b"not a pe".to_vec();
        assert!(build(&i).is_err());
        // A UKI is not a stub.
        let uki = build(&inputs()).unwrap();
        let mut i = inputs();
        i.stub = uki;
        let e = build(&i).unwrap_err().to_string();
        assert!(e.contains("already has"), "{e}");
        // Not an EFI application.
        let mut i = inputs();
        put16(&mut i.stub, 0x84 + 20 + 68, 3);
        assert!(
            build(&i)
                .unwrap_err()
                .to_string()
                .contains("EFI application")
        );
    }

    #[test]
    fn kernel_release_from_the_setup_header() {
        assert_eq!(
            kernel_release(&inputs().kernel).as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(kernel_release(b"not a kernel"), None);
    }
}
