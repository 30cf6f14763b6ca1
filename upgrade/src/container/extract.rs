//! A squashfs image's files, extracted for the process runtime (backhand's
//! reader; nothing outside the target directory).

use std::path::Path;

use crate::error::ContainerFailure;

/// Extracts a squashfs image's files into `to` (backhand's reader): regular files
/// with their modes, directories, symlinks.
pub fn extract_squashfs(image: &Path, to: &Path) -> Result<(), ContainerFailure> {
    extract(image, to).map_err(ContainerFailure::Extract)
}

fn extract(image: &Path, to: &Path) -> Result<(), String> {
    use backhand::{FilesystemReader, InnerNode};
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let fs = FilesystemReader::from_reader(std::io::BufReader::new(f))
        .map_err(|e| format!("not a squashfs image: {e}"))?;
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for node in fs.files() {
        let rel = node.fullpath.strip_prefix("/").unwrap_or(&node.fullpath);
        if rel.as_os_str().is_empty() {
            continue;
        }
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("unsafe path in image: {}", node.fullpath.display()));
        }
        let dst = to.join(rel);
        let mode = u32::from(node.header.permissions) & 0o7777;
        let fail = |e: std::io::Error| format!("{}: {e}", dst.display());
        match &node.inner {
            InnerNode::Dir(_) => std::fs::create_dir_all(&dst).map_err(fail)?,
            InnerNode::File(file) => {
                let mut out = std::fs::File::create(&dst).map_err(fail)?;
                let mut r = fs.file(file).reader();
                std::io::copy(&mut r, &mut out).map_err(fail)?;
                out.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(fail)?;
            }
            InnerNode::Symlink(l) => std::os::unix::fs::symlink(&l.link, &dst).map_err(fail)?,
            // Device nodes, fifos and sockets are the runtime's business, not files.
            _ => {}
        }
    }
    Ok(())
}
