//! `image_path`: a path in the cluster's file namespace, resolved inside the
//! upgrade directory, with or without a leading slash (the Web UI's habit).
//! `..`, symlinks that lead out, devices, directories and other non-files are
//! refused before anything is read.
//!
//! The file is opened once, here, and the engine reads that descriptor
//! ([`upgrade::BundleSource::Opened`]): `openat2` beneath the directory
//! (`RESOLVE_BENEATH`: no `..`, absolute link or magic link leads out, checked
//! by the kernel as it walks), non-blocking (a FIFO swapped in cannot hold the
//! agent), then `fstat` of what was opened. Nothing swapped in after the check
//! is read.
//!
//! Where `openat2` is refused (systemd's `RestrictSUIDSGID=` answers it with
//! `ENOSYS`, since seccomp cannot read its flags), the file is opened by its
//! resolved name without following a last link, and what was opened is
//! checked instead: the kernel's own name for the descriptor
//! (`/proc/self/fd/N`) must be beneath the directory. A directory swapped for
//! a link in between shows there, and is refused.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Component, Path, PathBuf};

/// An image path resolved to a file inside the upgrade directory, opened.
#[derive(Debug)]
pub struct ImagePath {
    /// The file's name on this node (logs only: callers see `shown`).
    pub file: PathBuf,
    /// The path as the cluster names it (`/upgrade/x.qimg`).
    pub shown: String,
    /// The file, opened read-only; what the engine reads.
    pub opened: File,
    /// Its size, from the descriptor.
    pub size: u64,
}

impl ImagePath {
    /// What the engine reads: this descriptor, nothing opened again by name.
    pub fn source(self) -> upgrade::BundleSource {
        upgrade::BundleSource::Opened(self.opened)
    }
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

/// Resolves `image_path` inside `dir` and opens it (see the module's text).
pub fn resolve(dir: &Path, image_path: &str) -> Result<ImagePath, PathProblem> {
    resolve_with(dir, image_path, open_beneath)
}

/// How a file beneath a directory is opened: the directory (opened, and its
/// name), the path below it.
type Opener = fn(&File, &Path, &Path) -> std::io::Result<File>;

fn resolve_with(dir: &Path, image_path: &str, open: Opener) -> Result<ImagePath, PathProblem> {
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
    let root = match File::open(dir) {
        Ok(r) => r,
        // A fresh node, where nobody has put anything yet: the file is not here.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PathProblem::Missing(image_path.into()));
        }
        Err(e) => return Err(PathProblem::Dir(format!("{}: {e}", dir.display()))),
    };
    let opened = match open(&root, dir, &clean) {
        Ok(f) => f,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) => PathProblem::Missing(image_path.into()),
                // The kernel's word for a walk that would leave the directory.
                Some(libc::EXDEV | libc::ELOOP) => PathProblem::Escapes(image_path.into()),
                _ => PathProblem::Dir(format!("{}: {e}", clean.display())),
            });
        }
    };
    let m = opened
        .metadata()
        .map_err(|e| PathProblem::Dir(e.to_string()))?;
    if !m.is_file() {
        return Err(PathProblem::NotFile(image_path.into(), kind(&m)));
    }
    // Blocking reads again (no effect on a regular file; tidy for the engine).
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let fd = opened.as_raw_fd();
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(ImagePath {
        file: dir.join(&clean),
        shown: format!("/{}", clean.display()),
        size: m.len(),
        opened,
    })
}

const FLAGS: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

/// `openat2(root, rel, FLAGS, RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS)`, or
/// [`open_checked`] where `openat2` is refused.
fn open_beneath(root: &File, dir: &Path, rel: &Path) -> std::io::Result<File> {
    match openat2(root, rel) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
            open_checked(root, dir, rel)
        }
        r => r,
    }
}

/// Opens `dir/rel` by its resolved name (no last link followed), then checks
/// that the kernel's name of what it opened is beneath `dir` (`EXDEV` if not).
fn open_checked(_root: &File, dir: &Path, rel: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let root = dir.canonicalize()?;
    let file = root.join(rel).canonicalize()?;
    if !file.starts_with(&root) {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(&file)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd()))?;
    if !real.starts_with(&root) {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(opened)
}

/// `openat2(root, rel, FLAGS, RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS)`.
fn openat2(root: &File, rel: &Path) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` is plain data; zero is "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an
    // `open_how` of the size passed; the result is a new descriptor we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_inside_and_refuses_the_rest() {
        resolves_inside_and_refuses_the_rest_with(open_beneath);
    }

    #[test]
    fn resolves_the_same_where_openat2_is_refused() {
        resolves_inside_and_refuses_the_rest_with(open_checked);
    }

    fn resolves_inside_and_refuses_the_rest_with(open: Opener) {
        let resolve = |dir: &Path, p: &str| resolve_with(dir, p, open);
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
            assert_eq!(r.file, up.join("sub/a.qimg"));
            assert_eq!(r.size, 1);
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
        assert!(matches!(
            resolve(&up, "sub/a.qimg/x"),
            Err(PathProblem::Missing(_))
        ));
        // A directory link that leads out, then a file below it.
        std::fs::create_dir(d.path().join("outside")).unwrap();
        std::fs::write(d.path().join("outside/b.qimg"), b"x").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), up.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", up.join("rel")).unwrap();
        for p in ["abs/b.qimg", "rel/b.qimg"] {
            assert!(
                matches!(resolve(&up, p), Err(PathProblem::Escapes(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn what_is_read_is_what_was_opened_and_checked() {
        use std::io::Read;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.qimg"), b"the bundle").unwrap();
        let mut img = resolve(d.path(), "a.qimg").unwrap();
        // A link to a secret swapped in under the same name after the check.
        std::fs::write(d.path().join("secret"), b"the secret").unwrap();
        std::fs::remove_file(d.path().join("a.qimg")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), d.path().join("a.qimg")).unwrap();
        let mut read = String::new();
        img.opened.read_to_string(&mut read).unwrap();
        assert_eq!(read, "the bundle");
        assert_eq!(img.size, 10);
        // And the name, resolved again, is refused (an absolute link).
        assert!(matches!(
            resolve(d.path(), "a.qimg"),
            Err(PathProblem::Escapes(_))
        ));
    }

    #[test]
    fn a_device_inside_is_not_a_file() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opened without blocking (nobody writes it), then refused.
        assert!(matches!(
            resolve(d.path(), "f"),
            Err(PathProblem::NotFile(_, "fifo"))
        ));
        std::os::unix::fs::symlink("f", d.path().join("to-f")).unwrap();
        assert!(matches!(
            resolve(d.path(), "to-f"),
            Err(PathProblem::NotFile(_, "fifo"))
        ));
    }
}
