//! The node's Debian base: a root tree made by `mmdebstrap` from the Debian archive
//! (systemd, udev, the cloud kernel and its modules, what systemd needs to open a
//! verity root), and an initrd generated from the same packages by `dracut` inside
//! that tree, so kernel, modules and initrd always match. Cached under the target
//! directory by the apt candidate versions of the packages asked for: a second run
//! does not rebuild it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::super::assets::apt_show;

/// What the node's root is made of (apt resolves their dependencies).
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "dmsetup",
    "libcryptsetup12",
    "e2fsprogs",
    "util-linux",
    "iproute2",
    "zstd",
    "openssh-server",
    "etcd-server",
    "dracut-core",
    "linux-image-cloud-amd64",
];

/// dracut's modules for the initrd: systemd in the initrd, its verity generator and
/// device-mapper, the root-on-block logic. Drivers: the virtio disk, dm-verity,
/// squashfs; `efi_pstore`, so that a panic in the initrd (a refused verity block)
/// leaves the kernel's log in EFI variables for the next good boot to archive.
const DRACUT_MODULES: &str = "systemd systemd-initrd systemd-udevd systemd-veritysetup \
     dracut-systemd dm kernel-modules rootfs-block udev-rules base fs-lib";
const DRACUT_DRIVERS: &str = "virtio_blk virtio_pci dm_mod dm_verity squashfs efi_pstore";

/// The kernel modules the running node loads (`lsmod` on a booted node): the ESP's
/// file system, the virtio NIC, loop and fuse, device-mapper and verity, pstore,
/// the CPU's crypto. With what they depend on, the root keeps these and no other
/// module: 92 of the base's 295 MB were modules for hardware a node never has.
/// The initrd is made before, from all of them.
const MODULES: &str = "nls_ascii nls_cp437 vfat fat virtio_net net_failover failover \
     loop fuse configfs qemu_fw_cfg ip_tables x_tables squashfs dm_verity reed_solomon \
     dm_bufio dm_mod dm_mirror dm_region_hash dm_log efi_pstore efivarfs virtio_pci \
     virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_blk autofs4 \
     aesni_intel crypto_simd cryptd sha256_ssse3 sha512_ssse3 sha1_ssse3 crc32c_intel \
     crc32_pclmul crct10dif_pclmul ghash_clmulni_intel evdev button serio_raw";

/// Bump when the recipe below changes: part of the cache key.
const RECIPE: u32 = 5;

/// The cached base.
pub struct Base {
    /// The root tree (no kernel or initrd under /boot: they go into the UKI).
    pub root: PathBuf,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The initrd dracut made from the tree.
    pub initrd: PathBuf,
    /// The kernel release (`uname -r`).
    pub kernel_release: String,
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(25).collect();
        return Err(format!(
            "{what} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(())
}

/// The cache key: the recipe and the candidate version apt has for every package
/// asked for (the kernel through the versioned package the meta package names).
fn key() -> Result<(String, String), String> {
    let mut text = format!("recipe {RECIPE}\n");
    for p in PACKAGES {
        let (version, depends) = apt_show(p)?;
        text.push_str(&format!("{p} {version}\n"));
        if p.starts_with("linux-image-") {
            text.push_str(&format!("  depends {depends}\n"));
        }
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok((short, text))
}

/// The base, built unless the cache has it.
pub fn ensure(cache: &Path) -> Result<Base, String> {
    let (key, why) = key()?;
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let dir = cache.join(format!("node-base-{key}"));
    let base = || -> Result<Base, String> {
        let kernel_release = std::fs::read_to_string(dir.join("kernel-release"))
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .trim()
            .to_owned();
        Ok(Base {
            root: dir.join("root"),
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            kernel_release,
        })
    };
    if let Ok(packages) = std::fs::read_to_string(dir.join("packages.txt"))
        && dir.join(".complete").exists()
    {
        eprintln!(
            "xtask: node: Debian base cached ({}; {} packages)",
            dir.display(),
            packages.lines().count()
        );
        return base();
    }
    // One base at a time: older ones are of packages apt no longer offers.
    for e in std::fs::read_dir(cache).map_err(|e| format!("{}: {e}", cache.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("node-base-"))
        {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("key.txt"), &why).map_err(|e| e.to_string())?;
    let root = dir.join("root");
    eprintln!(
        "xtask: node: building the Debian base with mmdebstrap (bookworm, from the \
         archive apt uses): {}",
        PACKAGES.join(" ")
    );
    let start = Instant::now();
    // In the finished tree: the initrd from the tree's own kernel and modules
    // (without udev's hardware database: 13 of its 48 MB, unpacked by the kernel at
    // every boot, and nothing the initrd's virtio disk and verity need), the
    // installed package list, then /boot emptied (the UKI carries kernel and initrd)
    // and /dev emptied (devtmpfs).
    let hook = format!(
        "set -e; k=$(ls \"$1\"/lib/modules); echo \"$k\" > \"$1\"/../kernel-release; \
         mv \"$1\"/usr/lib/udev/hwdb.bin \"$1\"/../hwdb.bin.aside; \
         chroot \"$1\" dracut --quiet --force --no-hostonly --no-hostonly-cmdline --kver \"$k\" \
         --modules '{DRACUT_MODULES}' --drivers '{DRACUT_DRIVERS}' --compress zstd \
         /boot/qimg-initrd.img; \
         mv \"$1\"/../hwdb.bin.aside \"$1\"/usr/lib/udev/hwdb.bin; \
         for m in {MODULES}; do chroot \"$1\" modprobe --set-version \"$k\" --show-depends \"$m\"; done \
           | awk '$1 == \"insmod\" {{ print $2 }}' | sort -u > \"$1\"/../modules.keep; \
         test -s \"$1\"/../modules.keep; \
         find \"$1\"/lib/modules/\"$k\"/kernel -name '*.ko*' | sed \"s|^$1||\" | sort \
           | comm -23 - \"$1\"/../modules.keep | sed \"s|^|$1|\" | xargs rm -f; \
         chroot \"$1\" depmod \"$k\"; \
         cp \"$1\"/boot/qimg-initrd.img \"$1\"/../initrd.img; \
         cp \"$1\"/boot/vmlinuz-\"$k\" \"$1\"/../vmlinuz; \
         chroot \"$1\" dpkg-query -W -f '${{Package}} ${{Version}}\\n' > \"$1\"/../packages.txt"
    );
    run(
        "mmdebstrap",
        Command::new("mmdebstrap")
            .args(["--variant=essential", "--mode=root", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-exclude=/usr/share/info/*",
            ])
            .arg(format!("--customize-hook={hook}"))
            .arg("bookworm")
            .arg(&root),
    )?;
    for sub in ["boot", "dev"] {
        let d = root.join(sub);
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = std::fs::remove_file(root.join(link));
    }
    let packages = std::fs::read_to_string(dir.join("packages.txt")).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: node: Debian base built in {:.1} s: {} packages downloaded and installed:",
        start.elapsed().as_secs_f64(),
        packages.lines().count()
    );
    for chunk in packages.lines().collect::<Vec<_>>().chunks(6) {
        eprintln!("xtask: node:   {}", chunk.join(", "));
    }
    std::fs::write(dir.join(".complete"), "").map_err(|e| e.to_string())?;
    base()
}
