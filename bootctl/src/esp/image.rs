//! The ESP inside a disk image, through `fatfs` over the partition's byte range.

use std::cell::RefCell;
use std::io::{Read, Seek, Write};
use std::rc::Rc;

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use super::{DIRS, Esp, Slice, TMP_SUFFIX, check_path, check_room, esp_err, fat};
use crate::Error;

/// The timestamp of every file qimg writes on an ESP: 1980-01-01 00:00, the FAT
/// epoch. Fixed, so images are reproducible; valid, because firmware checks it:
/// fatfs's default without a clock is month 0 day 0, and OVMF's FAT driver then
/// refuses systemd-boot's boot-counting rename with "Invalid Parameter" (measured).
#[derive(Debug)]
struct FatEpoch;

impl fatfs::TimeProvider for FatEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FAT_EPOCH: FatEpoch = FatEpoch;

fn options() -> FsOptions {
    FsOptions::new()
        .update_accessed_date(false)
        .time_provider(&FAT_EPOCH)
}

/// Formats the byte range as FAT32 with the given volume id and label, creates the
/// standard directories ([`DIRS`]) and repairs their `.`/`..` entries so that
/// `fsck.vfat` finds nothing to fix.
pub fn format<D: Read + Write + Seek>(
    dev: &mut D,
    start: u64,
    len: u64,
    volume_id: u32,
) -> Result<(), Error> {
    let mut slice = Slice::new(&mut *dev, start, len);
    let e = |op| esp_err(op, "ESP");
    fatfs::format_volume(
        &mut slice,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(*b"ESP        "),
    )
    .map_err(e("formatting"))?;
    {
        let fs = FileSystem::new(&mut slice, options()).map_err(e("mounting"))?;
        for d in DIRS {
            fs.root_dir()
                .create_dir(d)
                .map_err(e("creating directories in"))?;
        }
        // Fills in the FSInfo free-cluster count, which fatfs 0.3.6 leaves unset.
        fs.stats().map_err(e("counting free space of"))?;
        fs.unmount().map_err(e("unmounting"))?;
    }
    for d in DIRS {
        fat::fix_dot_entries(&mut slice, d).map_err(e("repairing directories of"))?;
    }
    Ok(())
}

/// A device shared between the mounted filesystem and its owner, so the owner can
/// unmount (which writes fatfs's bookkeeping), flush and mount again.
#[derive(Debug)]
struct Shared<D>(Rc<RefCell<D>>);

impl<D> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Shared(Rc::clone(&self.0))
    }
}

impl<D: Read> Read for Shared<D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl<D: Write> Write for Shared<D> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

impl<D: Seek> Seek for Shared<D> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.borrow_mut().seek(to)
    }
}

type Fs<D> = FileSystem<Slice<Shared<D>>>;

/// An ESP inside an image, mounted with fatfs. [`Esp::flush`] writes the
/// filesystem's bookkeeping and flushes the device; dropping does the same.
pub struct ImageEsp<D: Read + Write + Seek> {
    dev: Shared<D>,
    start: u64,
    len: u64,
    fs: Option<Fs<D>>,
}

fn mount<D: Read + Write + Seek>(dev: &Shared<D>, start: u64, len: u64) -> Result<Fs<D>, Error> {
    FileSystem::new(Slice::new(dev.clone(), start, len), options())
        .map_err(esp_err("mounting", "ESP"))
}

impl<D: Read + Write + Seek> ImageEsp<D> {
    /// Mounts the FAT filesystem in `len` bytes of `dev` from `start`.
    pub fn open(dev: D, start: u64, len: u64) -> Result<ImageEsp<D>, Error> {
        let dev = Shared(Rc::new(RefCell::new(dev)));
        let fs = mount(&dev, start, len)?;
        Ok(ImageEsp {
            dev,
            start,
            len,
            fs: Some(fs),
        })
    }

    fn fs(&self) -> &Fs<D> {
        self.fs.as_ref().expect("mounted except inside flush")
    }

    fn unmount(&mut self) -> Result<(), Error> {
        if let Some(fs) = self.fs.take() {
            fs.stats()
                .map_err(esp_err("counting free space of", "ESP"))?;
            fs.unmount().map_err(esp_err("unmounting", "ESP"))?;
        }
        self.dev.flush().map_err(esp_err("flushing", "ESP"))
    }

    fn split(path: &str) -> (&str, &str) {
        path.rsplit_once('/').unwrap_or(("", path))
    }
}

impl<D: Read + Write + Seek> Esp for ImageEsp<D> {
    fn list(&mut self, dir: &str) -> Result<Vec<String>, Error> {
        check_path(dir)?;
        let d = self
            .fs()
            .root_dir()
            .open_dir(dir)
            .map_err(esp_err("listing", dir))?;
        let mut out = vec![];
        for e in d.iter() {
            let e = e.map_err(esp_err("listing", dir))?;
            if e.is_file() {
                out.push(e.file_name());
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        check_path(path)?;
        let mut f = self
            .fs()
            .root_dir()
            .open_file(path)
            .map_err(esp_err("reading", path))?;
        let mut v = vec![];
        f.read_to_end(&mut v).map_err(esp_err("reading", path))?;
        Ok(v)
    }

    fn exists(&mut self, path: &str) -> Result<bool, Error> {
        check_path(path)?;
        let (dir, name) = Self::split(path);
        let root = self.fs().root_dir();
        let d = if dir.is_empty() {
            root
        } else {
            match root.open_dir(dir) {
                Ok(d) => d,
                Err(_) => return Ok(false),
            }
        };
        for e in d.iter() {
            if e.map_err(esp_err("listing", dir))?
                .file_name()
                .eq_ignore_ascii_case(name)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn free_bytes(&mut self) -> Result<u64, Error> {
        let s = self
            .fs()
            .stats()
            .map_err(esp_err("measuring free space of", "ESP"))?;
        Ok(u64::from(s.free_clusters()) * u64::from(s.cluster_size()))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), Error> {
        check_path(from)?;
        check_path(to)?;
        if self.exists(to)? {
            return Err(Error::Esp {
                op: "renaming onto",
                path: to.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let (dir, _) = Self::split(to);
        let root = self.fs().root_dir();
        let dst = if dir.is_empty() {
            root.clone()
        } else {
            root.open_dir(dir).map_err(esp_err("renaming into", to))?
        };
        root.rename(from, &dst, Self::split(to).1)
            .map_err(esp_err("renaming", from))
    }

    fn remove(&mut self, path: &str) -> Result<(), Error> {
        check_path(path)?;
        self.fs()
            .root_dir()
            .remove(path)
            .map_err(esp_err("removing", path))
    }

    fn write_new(&mut self, path: &str, data: &[u8]) -> Result<(), Error> {
        check_path(path)?;
        if self.exists(path)? {
            return Err(Error::Esp {
                op: "writing",
                path: path.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        check_room(self, path, data.len() as u64)?;
        let tmp = format!("{path}{TMP_SUFFIX}");
        {
            let mut f = self
                .fs()
                .root_dir()
                .create_file(&tmp)
                .map_err(esp_err("creating", path))?;
            f.truncate().map_err(esp_err("writing", path))?;
            f.write_all(data)
                .and_then(|()| f.flush())
                .map_err(esp_err("writing", path))?;
        }
        crate::crashpoint::reached("entry-write");
        self.rename(&tmp, path)
    }

    fn create_dir(&mut self, path: &str) -> Result<(), Error> {
        check_path(path)?;
        if self.fs().root_dir().open_dir(path).is_ok() {
            return Ok(());
        }
        self.fs()
            .root_dir()
            .create_dir(path)
            .map_err(esp_err("creating directory", path))?;
        // fatfs writes `.`/`..` that fsck rejects: unmount, repair, mount again.
        self.unmount()?;
        {
            let mut slice = Slice::new(self.dev.clone(), self.start, self.len);
            fat::fix_dot_entries(&mut slice, path).map_err(esp_err("repairing directory", path))?;
        }
        self.fs = Some(mount(&self.dev, self.start, self.len)?);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.unmount()?;
        self.fs = Some(mount(&self.dev, self.start, self.len)?);
        Ok(())
    }
}

impl<D: Read + Write + Seek> Drop for ImageEsp<D> {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}
