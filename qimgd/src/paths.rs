//! `image_path`: a path in the cluster's file namespace, resolved inside the
//! upgrade directory, with or without a leading slash (the Web UI's habit).
//! `..`, symlinks that lead out, devices, directories and other non-files are
//! refused before anything is read.

use std::path::{Component, Path, PathBuf};

/// An image path resolved to a file inside the upgrade directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePath {
    /// The file (canonical).
    pub file: PathBuf,
    /// The path as the cluster names it (`/upgrade/x.qimg`).
    pub shown: String,
}

/// Why an image path is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    /// Empty, or only slashes.
    #[error("image_path is empty")]
    Empty,
    /// A NUL byte or a `..` component.
    #[error("image_path {0:?} may not contain '..' or NUL")]
    Traversal(String),
    /// Nothing there.
    #[error("image_path {0:?} does not exist")]
    Missing(String),
    /// Resolves (through a symlink) to a place outside the upgrade directory.
    #[error("image_path {0:?} leads outside the upgrade directory")]
    Escapes(String),
    /// An upload not finished (`crate::images`).
    #[error("image_path {0:?} names an upload in progress, not a bundle")]
    Partial(String),
    /// Not a regular file.
    #[error("image_path {0:?} is a {1}, not a file")]
    NotFile(String, &'static str),
    /// The upgrade directory itself is unusable.
    #[error("the upgrade directory cannot be read: {0}")]
    Dir(String),
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Resolves `image_path` inside `dir`.
pub fn resolve(dir: &Path, image_path: &str) -> Result<ImagePath, PathProblem> {
    if image_path.contains('\0') {
        return Err(PathProblem::Traversal(image_path.replace('\0', "\\0")));
    }
    let rel = Path::new(image_path.trim_start_matches('/'));
    let mut clean = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n)
                if n.to_string_lossy()
                    .starts_with(crate::images::PARTIAL_PREFIX) =>
            {
                return Err(PathProblem::Partial(image_path.into()));
            }
            Component::Normal(n) => clean.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(PathProblem::Traversal(image_path.into()));
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(PathProblem::Empty);
    }
    let root = match dir.canonicalize() {
        Ok(r) => r,
        // A fresh node, where nobody has put anything yet: the file is not here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PathProblem::Missing(image_path.into()));
        }
        Err(e) => return Err(PathProblem::Dir(format!("{}: {e}", dir.display()))),
    };
    let file = match root.join(&clean).canonicalize() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PathProblem::Missing(image_path.into()));
        }
        Err(e) => return Err(PathProblem::Dir(e.to_string())),
    };
    if !file.starts_with(&root) {
        return Err(PathProblem::Escapes(image_path.into()));
    }
    let m = std::fs::metadata(&file).map_err(|e| PathProblem::Dir(e.to_string()))?;
    if !m.is_file() {
        return Err(PathProblem::NotFile(image_path.into(), kind(&m)));
    }
    Ok(ImagePath {
        file,
        shown: format!("/{}", clean.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_and_refuses_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path().join("up");
        std::fs::create_dir_all(up.join("sub")).unwrap();
        std::fs::write(up.join("sub/a.qimg"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink("../../secret", up.join("sub/out")).unwrap();
        std::os::unix::fs::symlink("a.qimg", up.join("sub/in")).unwrap();
        std::os::unix::fs::symlink("/dev/null", up.join("null")).unwrap();

        for p in ["sub/a.qimg", "/sub/a.qimg", "//sub/./a.qimg"] {
            let r = resolve(&up, p).unwrap();
            assert_eq!(r.shown, "/sub/a.qimg");
            assert_eq!(r.file, up.canonicalize().unwrap().join("sub/a.qimg"));
        }
        assert_eq!(resolve(&up, "sub/in").unwrap().shown, "/sub/in");
        // A node where nobody has put anything yet has no upgrade directory:
        // the file is missing (404, or handed to a node that has it), not an error.
        assert!(matches!(
            resolve(&d.path().join("never-made"), "a.qimg"),
            Err(PathProblem::Missing(_))
        ));
        assert_eq!(resolve(&up, "").unwrap_err(), PathProblem::Empty);
        std::fs::write(up.join(".upload-abc"), b"half").unwrap();
        assert!(matches!(
            resolve(&up, "/.upload-abc"),
            Err(PathProblem::Partial(_))
        ));
        assert_eq!(resolve(&up, "///").unwrap_err(), PathProblem::Empty);
        assert!(matches!(
            resolve(&up, "../secret"),
            Err(PathProblem::Traversal(_))
        ));
        assert!(matches!(
            resolve(&up, "sub/../../secret"),
            Err(PathProblem::Traversal(_))
        ));
        assert!(matches!(
            resolve(&up, "a\0b"),
            Err(PathProblem::Traversal(_))
        ));
        assert!(matches!(
            resolve(&up, "sub/out"),
            Err(PathProblem::Escapes(_))
        ));
        assert!(matches!(resolve(&up, "null"), Err(PathProblem::Escapes(_))));
        assert!(matches!(
            resolve(&up, "sub"),
            Err(PathProblem::NotFile(_, "directory"))
        ));
        assert!(matches!(resolve(&up, "nope"), Err(PathProblem::Missing(_))));
    }

    #[test]
    fn a_device_inside_is_not_a_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            resolve(d.path(), "f"),
            Err(PathProblem::NotFile(_, "fifo"))
        ));
    }
}
