//! Unified Kernel Images: building them from the systemd stub ([`build`]) and
//! inspecting them with goblin ([`inspect`]): what systemd-boot will read from one.

pub mod build;

use goblin::pe::PE;
use goblin::pe::subsystem::IMAGE_SUBSYSTEM_EFI_APPLICATION;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::model::OsRelease;

/// Schema id of `qbootctl inspect-uki --json`.
pub const INSPECT_SCHEMA: &str = "qbootctl.inspect-uki/1";

/// One PE section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Section name.
    pub name: String,
    /// Size in memory (the content's size).
    pub size: u64,
    /// Virtual address relative to the image base.
    pub virtual_address: u64,
}

/// What a UKI says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UkiInfo {
    /// Always [`INSPECT_SCHEMA`].
    pub schema: String,
    /// `.osrel` `ID`.
    pub id: Option<String>,
    /// `.osrel` `IMAGE_ID`.
    pub image_id: Option<String>,
    /// The version systemd-boot orders by (`IMAGE_VERSION`, `VERSION`, `VERSION_ID`, `BUILD_ID`).
    pub version: Option<String>,
    /// The title systemd-boot shows.
    pub title: Option<String>,
    /// `.cmdline`, without a trailing newline.
    pub cmdline: Option<String>,
    /// `.uname`: the kernel release.
    pub kernel_release: Option<String>,
    /// All sections, in file order.
    pub sections: Vec<Section>,
}

fn not_uki(reason: impl Into<String>) -> Error {
    Error::NotUki {
        reason: reason.into(),
    }
}

/// Parses a UKI. A file that is not PE, not an EFI application, or has no `.linux`
/// section is an error saying which.
pub fn inspect(bytes: &[u8]) -> Result<UkiInfo, Error> {
    let pe = PE::parse(bytes).map_err(|e| not_uki(format!("not a PE image: {e}")))?;
    let subsystem = pe
        .header
        .optional_header
        .map(|o| o.windows_fields.subsystem)
        .ok_or_else(|| not_uki("no PE optional header"))?;
    if subsystem != IMAGE_SUBSYSTEM_EFI_APPLICATION {
        return Err(not_uki(format!(
            "not an EFI application (subsystem {subsystem}, expected {IMAGE_SUBSYSTEM_EFI_APPLICATION})"
        )));
    }
    let mut sections = Vec::new();
    let text = |name: &str| -> Result<Option<String>, Error> {
        let Some(s) = pe.sections.iter().find(|s| s.name().ok() == Some(name)) else {
            return Ok(None);
        };
        let start = s.pointer_to_raw_data as usize;
        let len = (s.virtual_size.min(s.size_of_raw_data)) as usize;
        let data = bytes
            .get(start..start + len)
            .ok_or_else(|| not_uki(format!("section {name} lies beyond the end of the file")))?;
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        Ok(Some(
            String::from_utf8_lossy(&data[..end])
                .trim_end_matches('\n')
                .to_owned(),
        ))
    };
    let osrel = text(".osrel")?
        .map(|t| OsRelease::parse(&t))
        .unwrap_or_default();
    let cmdline = text(".cmdline")?;
    let kernel_release = text(".uname")?;
    for s in &pe.sections {
        let name = s
            .name()
            .map_err(|e| not_uki(format!("bad section name: {e}")))?
            .to_owned();
        sections.push(Section {
            name,
            size: u64::from(s.virtual_size),
            virtual_address: u64::from(s.virtual_address),
        });
    }
    if !sections.iter().any(|s| s.name == ".linux") {
        return Err(not_uki(
            "no .linux section: this is not a UKI (a bare stub?)",
        ));
    }
    Ok(UkiInfo {
        schema: INSPECT_SCHEMA.into(),
        id: osrel.id.clone(),
        image_id: osrel.image_id.clone(),
        version: osrel.boot_version(),
        title: osrel.title(),
        cmdline,
        kernel_release,
        sections,
    })
}

impl UkiInfo {
    /// Renders the report for a person.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "title:   {}", opt(&self.title));
        let _ = writeln!(
            s,
            "id:      {} (image id {})",
            opt(&self.id),
            opt(&self.image_id)
        );
        let _ = writeln!(s, "version: {}", opt(&self.version));
        let _ = writeln!(s, "kernel:  {}", opt(&self.kernel_release));
        let _ = writeln!(s, "cmdline: {}", opt(&self.cmdline));
        let _ = writeln!(s, "sections:");
        for x in &self.sections {
            let _ = writeln!(
                s,
                "  {:<10} {:>12} bytes at {:#x}",
                x.name, x.size, x.virtual_address
            );
        }
        s
    }
}
