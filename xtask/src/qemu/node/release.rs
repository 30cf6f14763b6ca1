//! The node's releases: the Debian base plus this project's `qimgd`, `qq` and
//! `qbootctl` with their shipped units and configuration, built into signed bundles
//! by `imagebuild` (squashfs + dm-verity root, a UKI of the base's kernel and initrd
//! whose command line carries the root hash, the product container).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imagebuild::Cancel;
use imagebuild::bundle::{self, BuildOptions, DEFAULT_STAGING_MEMORY};
use imagebuild::spec::ReleaseSpec;
use qimg::NoProgress;

use super::base::Base;
use crate::{root, target_dir};

/// The product the node's slots belong to.
pub const PRODUCT: &str = "qimg-node";
/// The admin account the tests log in with.
pub const USER: &str = "admin";
/// Its password (a test node's, on loopback only).
pub const PASSWORD: &str = "qemu-node-test";

/// The kernel command line; `imagebuild` appends ` roothash=…`. The initrd's
/// systemd-veritysetup-generator then opens the root from the partitions whose
/// UUIDs are the hash's halves, and a corrupted block panics the kernel: a failed
/// boot the loader counts, whose log `efi_pstore` (loaded first in the initrd) keeps
/// in EFI variables for `systemd-pstore` to archive at the next good boot, where the
/// agent reads why the tries ran out. A panic reboots after a second. A failed initrd
/// reboots instead of waiting at an emergency shell; first-boot prompts are off (the
/// node is configured). The kernel resets through the chipset's ACPI reset register,
/// not the firmware's ResetSystem (once, under load, a reset through OVMF never came
/// back).
pub const CMDLINE: &str = "console=ttyS0,115200 panic=1 rd.shell=0 rd.emergency=reboot \
     rd.driver.pre=efi_pstore systemd.verity_root_options=panic-on-corruption \
     systemd.firstboot=off systemd.show_status=yes loglevel=4 reboot=acpi";

/// How a release's platform behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Its health check passes.
    Good,
    /// Its health check fails (the product says why).
    Failing,
}

/// One release of the test node.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub version: &'static str,
    pub platform_version: &'static str,
    /// A platform (root + UKI) in the bundle, with its health; `None`: container only.
    pub platform: Option<Health>,
}

impl Release {
    /// A platform release `version` (its platform the same version) whose
    /// platform boots with `health`.
    pub const fn platform(version: &'static str, health: Health) -> Release {
        Release {
            version,
            platform_version: version,
            platform: Some(health),
        }
    }

    /// A container-only release `version` for the platform `platform_version`
    /// (an instant upgrade).
    pub const fn container(version: &'static str, platform_version: &'static str) -> Release {
        Release {
            version,
            platform_version,
            platform: None,
        }
    }
}

fn io(p: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", p.display())
}

/// Writes `bytes` at `rel` inside `tree`, replacing what was there without
/// touching the file's other hard links (the tree shares its files with the cache).
fn put(tree: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    let p = tree.join(rel);
    std::fs::create_dir_all(p.parent().expect("a parent")).map_err(io(&p))?;
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).map_err(io(&p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))
}

fn link(tree: &Path, rel: &str, to: &str) -> Result<(), String> {
    let p = tree.join(rel);
    std::fs::create_dir_all(p.parent().expect("a parent")).map_err(io(&p))?;
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(to, &p).map_err(io(&p))
}

/// One of this project's binaries, without its debug sections.
fn binary(name: &str, out: &Path) -> Result<(), String> {
    let src = target_dir().join("debug").join(name);
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&src)
        .arg(out)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("objcopy: {e}"))?;
    if !st.success() {
        return Err(format!("objcopy --strip-debug {}: {st}", src.display()));
    }
    Ok(())
}

/// What every release adds to the base, once per run: binaries and the users file.
pub struct Shared {
    dir: PathBuf,
}

impl Shared {
    /// The operator's SSH private key.
    pub fn ssh_key(&self) -> PathBuf {
        self.dir.join("operator")
    }
}

impl Shared {
    pub fn make(work: &Path) -> Result<Shared, String> {
        let dir = work.join("shared");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for b in ["qimgd", "qq", "qbootctl"] {
            binary(b, &dir.join(b))?;
        }
        // The operator's SSH key: bundles are copied onto the node with scp.
        crate::sshd::keygen(&dir.join("operator"))?;
        // The users file, written by qimgd itself.
        let conf = dir.join("users-qimgd.toml");
        std::fs::write(
            &conf,
            format!(
                "node = \"/etc/qimg/node.toml\"\nupgrade_dir = \"/var/lib/qimg/upgrade\"\nusers = \"{}\"\n",
                dir.join("users.json").display()
            ),
        )
        .map_err(io(&conf))?;
        let mut child = Command::new(target_dir().join("debug/qimgd"))
            .arg("--config")
            .arg(&conf)
            .args(["user", "add", USER, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("qimgd user add: {e}"))?;
        {
            use std::io::Write;
            let mut i = child.stdin.take().expect("piped");
            writeln!(i, "{PASSWORD}").map_err(|e| e.to_string())?;
        }
        let st = child.wait().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("qimgd user add: {st}"));
        }
        Ok(Shared { dir })
    }
}

fn node_toml() -> String {
    "# The test node (docs/qemu-node.md): its boot disk, the ESP systemd mounts at\n\
     # /efi, the state on the data partition.\n\
     model = \"qemu\"\ntarget = \"onprem\"\ndisk = \"/dev/vda\"\nesp = \"/efi\"\n\
     state = \"/var/lib/qimg\"\nkeys = [\"/etc/qimg/release.pub\"]\n\
     reboot = [\"systemctl\", \"reboot\", \"--no-block\"]\n\
     platform_health = [\"/usr/lib/qimg/health-check\"]\nhealth_timeout_secs = 60\n\
     [runtime]\nkind = \"process\"\n"
        .to_owned()
}

const FSTAB: &str = "# /var: the data partition, formatted at first boot by systemd-makefs.\n\
# ext4's journal makes it consistent after a power cut; no fsck at boot.\n\
PARTLABEL=data /var ext4 defaults,x-systemd.makefs 0 0\n";

/// Units the node does not run: weekly ext4 scrubs, TRIM and dpkg database backups
/// (the root is read-only; `/var` is one small ext4), masked so that a first boot
/// does not catch up on them; gettys on virtual consoles (it has no display; the
/// serial console keeps its getty); dracut's copy of the initrd into /run for
/// shutdown (it unpacks the whole initrd at every boot, and a read-only squashfs
/// root needs no pivot back to unmount it); Debian's own etcd unit (a voting node
/// runs its member through `qimg-etcd.service`). Generators for what the node does not have
/// (encrypted, integrity or hibernation volumes, SysV scripts, rc.local, update
/// mode, `systemd.run=`) are masked too: under QEMU without KVM each costs time on
/// every boot's critical path.
const MASKED_UNITS: &[&str] = &[
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "getty@.service",
    "getty-static.service",
    "dracut-shutdown.service",
    "etcd.service",
];
const MASKED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-integritysetup-generator",
    "systemd-hibernate-resume-generator",
    "systemd-sysv-generator",
    "systemd-rc-local-generator",
    "systemd-system-update-generator",
    "systemd-run-generator",
];

const NETWORK: &str = "[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n";

/// How many nodes the image has a cluster address for.
pub const LINK_NODES: u32 = 3;

/// The MAC of node `n`'s NIC on the cluster's link.
pub fn link_mac(n: u32) -> String {
    format!("52:54:00:77:00:{n:02x}")
}

/// Node `n`'s address on the cluster's link (a network private to the VMs: the
/// switch in `switch.rs` carries it, the host has no address there).
pub fn link_address(n: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 77, 0, n as u8)
}

/// The `.network` of node `n`'s link NIC, found by its MAC (sorted before the
/// DHCP one, so it wins): a static address, no gateway, jumbo frames (the link
/// carries each frame as one datagram; six times fewer of them for a bundle
/// fetched from a peer).
fn link_network(n: u32) -> String {
    format!(
        "[Match]\nMACAddress={}\n[Link]\nMTUBytes=9000\n[Network]\nAddress={}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
        link_mac(n),
        link_address(n)
    )
}

/// The storage service's stand-in, the product container's `/entry`: it says it is
/// healthy, then plays the storage software's restriper as Qumulo's answers
/// `/v1/cluster/protection/restriper/status`. Data is at risk while a node of the
/// cluster is away and for `RESTRIPE` seconds after every node is back (also after
/// this service starts: a node that comes back restripes its data), then the
/// restriper has FINISHED. Like storage software it watches its peers itself: every
/// 2 s it connects to each node's agent port named in the node's cluster
/// directory (a node rebooting refuses or does not answer); it writes the status
/// to a file the probe reads. A node in no cluster is always FINISHED.
const CONTAINER_ENTRY: &str = r#"#!/bin/bash
echo "container $QIMG_CONTAINER_VERSION up"
echo ok > "$QIMG_HEALTH_FILE"
RESTRIPE=10
out=/run/qimg-storage
members=/var/lib/qimgd/cluster/cluster.json
mkdir -p "$out"
since=$(date +%s)
while :; do
  now=$(date +%s)
  total=0; online=0
  if [ -f "$members" ]; then
    for a in $(grep -o '"agent": *"[^"]*"' "$members" | cut -d'"' -f4); do
      total=$((total + 1))
      timeout 2 bash -c "</dev/tcp/${a%:*}/${a##*:}" 2>/dev/null && online=$((online + 1))
    done
  else
    since=0
  fi
  [ "$online" -lt "$total" ] && since=$now
  ran=$((now - since))
  if [ "$online" -lt "$total" ]; then
    state=RUNNING; risk=true; pct=0
  elif [ "$ran" -lt "$RESTRIPE" ]; then
    state=RUNNING; risk=true; pct=$((ran * 100 / RESTRIPE))
  else
    state=FINISHED; risk=false; pct=100
  fi
  printf '{"state": "%s", "phase": "REPROTECT", "blocked_reason": "", "data_at_risk": %s, "elapsed_seconds": %s, "percent_complete": %s, "coordinator_node": 0, "nodes_online": %s, "nodes": %s}
'     "$state" "$risk" "$ran" "$pct" "$online" "$total" > "$out/restriper.json.new"
  mv "$out/restriper.json.new" "$out/restriper.json"
  sleep 2
done
"#;

/// The agent's `restriper_probe` on the test node: the storage service's status,
/// refused when the service has not written it for 10 s (it is not running).
const RESTRIPER_PROBE: &str = r#"#!/bin/sh
f=/run/qimg-storage/restriper.json
[ -f "$f" ] || { echo "the storage service is not running (no $f)" >&2; exit 1; }
age=$(( $(date +%s) - $(stat -c %Y "$f") ))
[ "$age" -le 10 ] || { echo "the storage service stopped answering ${age} s ago" >&2; exit 1; }
cat "$f"
"#;

/// The agents' session lease on the test nodes (the shipped default is 4 s).
const LEASE_SECS: u32 = 10;

/// etcd's timing on the test nodes (its defaults: 100 ms heartbeats, 1 s
/// elections), a drop-in for `qimg-etcd.service`.
const ETCD_TIMING: &str = "[Service]\n\
Environment=ETCD_HEARTBEAT_INTERVAL=500 ETCD_ELECTION_TIMEOUT=5000\n";

/// Where the probe is on the node.
const PROBE_PATH: &str = "usr/lib/qimg/restriper-status";

/// Prints what this boot runs on, for the test harness reading the serial console:
/// the root's device and file system, the device-mapper table of `root` (verity,
/// with its root hash), the release.
const REPORT_UNIT: &str = "[Unit]\n\
Description=Report the booted root on the console (qimg test node)\n\
After=local-fs.target\n\
[Service]\nType=oneshot\nRemainAfterExit=yes\n\
ExecStart=/bin/sh -c 'echo \"QIMG-NODE-BOOT release=$(cat /etc/qimg-release) root=$(findmnt -n -o SOURCE,FSTYPE / | tr -s \" \" ,) table=$(dmsetup table root | tr \" \" ,)\" > /dev/console'\n\
[Install]\nWantedBy=multi-user.target\n";

fn health_script(h: Health, version: &str) -> String {
    match h {
        Health::Good => "#!/bin/sh\n# The product's platform check.\nexit 0\n".into(),
        Health::Failing => format!(
            "#!/bin/sh\necho \"release {version}: the storage daemon does not start on this platform\"\nexit 1\n"
        ),
    }
}

/// The release's root tree: the base, hard-linked, plus this release's files.
fn tree(
    base: &Base,
    shared: &Shared,
    dir: &Path,
    r: &Release,
    public_key: &str,
) -> Result<PathBuf, String> {
    let t = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&t);
    let st = Command::new("cp")
        .arg("-al")
        .arg(&base.root)
        .arg(&t)
        .status()
        .map_err(|e| format!("cp -al: {e}"))?;
    if !st.success() {
        return Err(format!("cp -al {}: {st}", base.root.display()));
    }
    let health = r.platform.unwrap_or(Health::Good);
    for b in ["qimgd", "qq", "qbootctl"] {
        let bytes = std::fs::read(shared.dir.join(b)).map_err(|e| e.to_string())?;
        put(&t, &format!("usr/bin/{b}"), &bytes, 0o755)?;
    }
    let units = root().join("systemd");
    for u in [
        "qimgd.service",
        "qimg-boot-check.service",
        "qimg-etcd.service",
    ] {
        let bytes = std::fs::read(units.join(u)).map_err(|e| e.to_string())?;
        put(&t, &format!("usr/lib/systemd/system/{u}"), &bytes, 0o644)?;
    }
    put(
        &t,
        "usr/lib/systemd/system/qimg-node-report.service",
        REPORT_UNIT.as_bytes(),
        0o644,
    )?;
    for (wants, unit, target) in [
        (
            "multi-user.target.wants",
            "qimgd.service",
            "/usr/lib/systemd/system/qimgd.service",
        ),
        (
            "multi-user.target.wants",
            "qimg-boot-check.service",
            "/usr/lib/systemd/system/qimg-boot-check.service",
        ),
        (
            "multi-user.target.wants",
            "qimg-etcd.service",
            "/usr/lib/systemd/system/qimg-etcd.service",
        ),
        (
            "multi-user.target.wants",
            "qimg-node-report.service",
            "/usr/lib/systemd/system/qimg-node-report.service",
        ),
        (
            "multi-user.target.wants",
            "systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service",
        ),
        (
            "sockets.target.wants",
            "systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket",
        ),
    ] {
        link(&t, &format!("etc/systemd/system/{wants}/{unit}"), target)?;
    }
    for unit in MASKED_UNITS {
        link(&t, &format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    for g in MASKED_GENERATORS {
        link(
            &t,
            &format!("etc/systemd/system-generators/{g}"),
            "/dev/null",
        )?;
    }
    put(
        &t,
        "etc/systemd/network/20-qemu.network",
        NETWORK.as_bytes(),
        0o644,
    )?;
    for n in 1..=LINK_NODES {
        put(
            &t,
            &format!("etc/systemd/network/10-link-{n}.network"),
            link_network(n).as_bytes(),
            0o644,
        )?;
    }
    put(&t, "etc/fstab", FSTAB.as_bytes(), 0o644)?;
    // The journal on the data partition: what the agents did before a reboot is
    // still there after it.
    put(
        &t,
        "etc/systemd/journald.conf.d/persistent.conf",
        b"[Journal]\nStorage=persistent\n",
        0o644,
    )?;
    put(&t, "etc/hostname", b"qimg-node\n", 0o644)?;
    put(&t, "etc/machine-id", b"", 0o444)?;
    let _ = std::fs::remove_file(t.join("etc/resolv.conf"));
    std::fs::create_dir_all(t.join("efi")).map_err(io(&t))?;
    put(&t, "etc/qimg/node.toml", node_toml().as_bytes(), 0o644)?;
    put(&t, "etc/qimg/release.pub", public_key.as_bytes(), 0o644)?;
    // The shipped configuration, and how the agent asks the storage software
    // whether the data is safe (the gate between a rolling reboot's batches).
    let mut conf = std::fs::read_to_string(units.join("qimgd.toml")).map_err(|e| e.to_string())?;
    conf.push_str(&format!("restriper_probe = [\"/{PROBE_PATH}\"]\n"));
    // Three VMs without KVM share two cores here, each 10-20 times slower than a
    // machine: a node preparing its slot missed renewing a 4 s lease (it went
    // offline, coordinators changed), and etcd's default 100 ms heartbeats and 1 s
    // elections flapped the same way. The test nodes allow for it.
    conf.push_str(&format!("cluster_lease_secs = {LEASE_SECS}\n"));
    put(&t, "etc/qimgd/qimgd.toml", conf.as_bytes(), 0o644)?;
    put(&t, PROBE_PATH, RESTRIPER_PROBE.as_bytes(), 0o755)?;
    put(
        &t,
        "etc/systemd/system/qimg-etcd.service.d/tcg.conf",
        ETCD_TIMING.as_bytes(),
        0o644,
    )?;
    let users = std::fs::read(shared.dir.join("users.json")).map_err(|e| e.to_string())?;
    put(&t, "etc/qimgd/users.json", &users, 0o600)?;
    put(
        &t,
        "usr/lib/qimg/health-check",
        health_script(health, r.version).as_bytes(),
        0o755,
    )?;
    let authorized = std::fs::read(shared.dir.join("operator.pub")).map_err(|e| e.to_string())?;
    put(&t, "root/.ssh/authorized_keys", &authorized, 0o600)?;
    std::fs::set_permissions(t.join("root"), std::fs::Permissions::from_mode(0o700))
        .map_err(io(&t))?;
    put(
        &t,
        "etc/qimg-release",
        format!("{}\n", r.version).as_bytes(),
        0o644,
    )?;
    Ok(t)
}

/// The product container: `/entry`, run by the process runtime, says it is healthy
/// and stays up, playing the storage service's restriper.
fn container(dir: &Path) -> Result<PathBuf, String> {
    let c = dir.join("container");
    let _ = std::fs::remove_dir_all(&c);
    put(&c, "entry", CONTAINER_ENTRY.as_bytes(), 0o755)?;
    Ok(c)
}

/// Builds release `r` into `work/<version>.qimg`.
pub fn build(
    base: &Base,
    shared: &Shared,
    work: &Path,
    r: &Release,
    key: &qimg::SecretKey,
    public_key: &str,
) -> Result<PathBuf, String> {
    let dir = work.join(format!("release-{}", r.version));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    container(&dir)?;
    let mut spec = format!(
        "product = \"{PRODUCT}\"\nversion = \"{}\"\nplatform_version = \"{}\"\ntarget = \"onprem\"\n\
         compatible_models = [\"qemu\"]\nmin_installed_version = \"1.0.0\"\n[compression]\nimages = \"none\"\n\
         [container]\nroot = \"container\"\n",
        r.version, r.platform_version
    );
    if r.platform.is_some() {
        tree(base, shared, &dir, r, public_key)?;
        std::fs::write(
            dir.join("os-release"),
            format!(
                "ID={PRODUCT}\nIMAGE_ID={PRODUCT}\nIMAGE_VERSION={v}\nVERSION_ID={v}\nPRETTY_NAME=\"qimg test node {v}\"\n",
                v = r.platform_version
            ),
        )
        .map_err(io(&dir))?;
        spec.push_str(&format!(
            "[platform]\nroot = \"rootfs\"\nkernel = \"{}\"\ninitrd = \"{}\"\ncmdline = \"{CMDLINE}\"\nos_release = \"os-release\"\n",
            base.vmlinuz.display(),
            base.initrd.display()
        ));
    }
    std::fs::write(dir.join("release.toml"), spec).map_err(io(&dir))?;
    let spec = ReleaseSpec::load(&dir.join("release.toml")).map_err(|e| format!("{e:#}"))?;
    let out = work.join(format!("{}.qimg", r.version));
    bundle::build(&BuildOptions {
        spec: &spec,
        source_date_epoch: 1_700_000_000,
        keys: std::slice::from_ref(key),
        out: &out,
        progress: &NoProgress,
        cancel: &Cancel::new(),
        staging_memory: DEFAULT_STAGING_MEMORY,
    })
    .map_err(|e| format!("bundle {}: {e:#}", r.version))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}
