//! Test assets: Debian's kernel and busybox, fetched with `apt-get download` and
//! unpacked with `dpkg -x` (never installed), cached by package version; the
//! initramfs (cpio newc, written here) with the per-slot test init.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a test boot needs from Debian.
pub struct Assets {
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Kernel release (e.g. `6.1.0-48-amd64`).
    pub release: String,
    /// Kernel package and version, for the record.
    pub kernel_package: String,
    /// Static busybox.
    pub busybox: PathBuf,
    /// Modules needed to see the virtio disk, in load order.
    pub modules: Vec<PathBuf>,
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Version:` and `Depends:` of a package as apt knows it.
pub(super) fn apt_show(package: &str) -> Result<(String, String), String> {
    let text = output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
            .ok_or_else(|| {
                format!("apt-cache show {package}: no {name} field (is the package known to apt?)")
            })
    };
    Ok((field("Version")?, field("Depends").unwrap_or_default()))
}

/// Downloads and unpacks `package` (at apt's candidate version) into the cache,
/// unless it is there already. Returns the unpacked root.
fn unpack(cache: &Path, package: &str) -> Result<(PathBuf, String), String> {
    let (version, _) = apt_show(package)?;
    let dir = cache.join(format!("{package}_{}", version.replace(':', "%3a")));
    if dir.join(".complete").exists() {
        return Ok((dir, version));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("xtask: downloading {package} {version}");
    output(
        Command::new("apt-get")
            .args(["download", &format!("{package}={version}")])
            .current_dir(&dir),
    )?;
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
    output(
        Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )?;
    std::fs::remove_file(&deb).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(".complete"), &version).map_err(|e| e.to_string())?;
    Ok((dir, version))
}

/// Resolves `linux-image-amd64` to the versioned kernel package it depends on (the ABI
/// number changes with security updates) and fetches it and busybox-static.
pub fn fetch(cache: &Path) -> Result<Assets, String> {
    std::fs::create_dir_all(cache).map_err(|e| e.to_string())?;
    let (_, depends) = apt_show("linux-image-amd64")?;
    let kernel_package = depends
        .split([',', '|'])
        .map(|d| d.trim().split(' ').next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d != &"linux-image-amd64")
        .ok_or_else(|| format!("linux-image-amd64 depends on no kernel package: {depends:?}"))?
        .to_owned();
    let (kdir, kversion) = unpack(cache, &kernel_package)?;
    let release = kernel_package.trim_start_matches("linux-image-").to_owned();
    let vmlinuz = kdir.join(format!("root/boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(format!("{} has no {}", kernel_package, vmlinuz.display()));
    }
    let moddir = kdir.join(format!("root/lib/modules/{release}"));
    let modules = module_order(&moddir, &["virtio_pci", "virtio_blk"])?;
    let (bdir, _) = unpack(cache, "busybox-static")?;
    let busybox = bdir.join("root/bin/busybox");
    if !busybox.is_file() {
        return Err("busybox-static has no /bin/busybox".into());
    }
    Ok(Assets {
        vmlinuz,
        release,
        kernel_package: format!("{kernel_package} {kversion}"),
        busybox,
        modules,
    })
}

/// The modules `wanted` need, dependencies first. The package has no `modules.dep`
/// (depmod makes it at install time), so dependencies come from each module's own
/// `.modinfo` strings (`depends=a,b`).
fn module_order(moddir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, String> {
    // Every module file under kernel/, by module name ('-' and '_' are the same).
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                files.insert(n.replace('-', "_"), p);
            }
        }
    }
    let depends = |path: &Path| -> Result<Vec<String>, String> {
        let b = std::fs::read(path).map_err(|e| e.to_string())?;
        Ok(b.split(|&c| c == 0)
            .find_map(|s| s.strip_prefix(b"depends="))
            .map(|d| {
                String::from_utf8_lossy(d)
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| x.replace('-', "_"))
                    .collect()
            })
            .unwrap_or_default())
    };
    let mut order: Vec<PathBuf> = vec![];
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, bool)> = wanted
        .iter()
        .rev()
        .map(|w| (w.to_string(), false))
        .collect();
    while let Some((name, expanded)) = todo.pop() {
        let path = files
            .get(&name)
            .ok_or_else(|| {
                format!("module {name} not found (compressed modules are not supported)")
            })?
            .clone();
        if expanded {
            if !order.contains(&path) {
                order.push(path);
            }
            continue;
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        todo.push((name.clone(), true));
        for d in depends(&path)? {
            if !seen.contains(&d) {
                todo.push((d, false));
            }
        }
    }
    Ok(order)
}

/// The test init: finds its slot (the partition labelled with its own version), then
/// reports `SLOT=<a|b> VERSION=<v> BOOT-OK` and powers off, or `BOOT-FAIL` and panics.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /bin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
. /etc/qimg-test.conf
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m; done
SLOT=unknown
i=0
while [ $i -lt 100 ] && [ $SLOT = unknown ]; do
  for n in 2 4; do
    if grep -qx "PARTNAME=${PRODUCT}_${VERSION}" /sys/class/block/vda$n/uevent 2>/dev/null; then
      if [ $n = 2 ]; then SLOT=a; else SLOT=b; fi
    fi
  done
  [ $SLOT = unknown ] && sleep 0.1
  i=$((i+1))
done
if [ "$MODE" = shell ]; then
  echo "SLOT=$SLOT VERSION=$VERSION: shell (exit or poweroff -f to stop)"
  exec /bin/sh
fi
if [ "$MODE" = bad ]; then
  echo "SLOT=$SLOT VERSION=$VERSION BOOT-FAIL"
  echo c > /proc/sysrq-trigger
fi
echo "SLOT=$SLOT VERSION=$VERSION BOOT-OK"
poweroff -f
"#;

/// An initramfs (cpio newc, uncompressed) with busybox, the modules, the init and its
/// configuration.
pub fn initramfs(a: &Assets, product: &str, version: &str, mode: &str) -> Result<Vec<u8>, String> {
    let mut c = super::cpio::Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "etc", "lib", "lib/modules"] {
        c.dir(d);
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    c.file("bin/busybox", 0o755, &read(&a.busybox)?);
    c.file("init", 0o755, INIT.as_bytes());
    c.file(
        "etc/qimg-test.conf",
        0o644,
        format!("PRODUCT={product}\nVERSION={version}\nMODE={mode}\n").as_bytes(),
    );
    let mut order = String::new();
    for m in &a.modules {
        let name = m
            .file_name()
            .expect("module file")
            .to_string_lossy()
            .into_owned();
        c.file(&format!("lib/modules/{name}"), 0o644, &read(m)?);
        order.push_str(&name);
        order.push('\n');
    }
    c.file("lib/modules/order", 0o644, order.as_bytes());
    Ok(c.finish())
}
