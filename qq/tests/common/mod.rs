//! Fixtures for the upgrade flows: signed bundles built at test time (real squashfs,
//! dm-verity, UKIs from the distribution's systemd stub), disk images made by
//! `imagebuild disk`, simulated nodes, and the `qq` binary. The agent's tests
//! (`qimgd/tests`) include this file too.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use imagebuild::disk::{DiskOptions, SYSTEMD_BOOT};
use imagebuild::sample;
use qimg::{NoProgress, SecretKey, Target, TrustedKeys};
use upgrade::node::Node;

pub const PRODUCT: &str = "qimg-demo";
pub const MODEL: &str = "demo-node-1";

/// What a test release is made of.
#[derive(Clone, Debug)]
pub struct Rel {
    pub version: &'static str,
    pub platform: &'static str,
    /// `/etc/qimg/sim-boot` in the platform root (`panic`, `unhealthy`).
    pub sim_boot: Option<&'static str>,
    /// The container's /entry reports healthy.
    pub healthy_container: bool,
    pub target: &'static str,
    pub min_installed: &'static str,
    pub settle: Option<(u64, &'static str)>,
    pub models: &'static str,
    /// A BMC firmware payload of this version (triplet).
    pub bmc: Option<&'static str>,
    /// Its `compatible_platforms` (TOML array body), if it declares them.
    pub bmc_platforms: Option<&'static str>,
}

impl Rel {
    pub const fn new(version: &'static str, platform: &'static str) -> Rel {
        Rel {
            version,
            platform,
            sim_boot: None,
            healthy_container: true,
            target: "onprem",
            min_installed: "7.0",
            settle: None,
            models: "\"demo-node-1\", \"demo-node-2\"",
            bmc: None,
            bmc_platforms: None,
        }
    }
}

pub fn key(n: u8) -> SecretKey {
    tests::test_key(n)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The BMC payload of a version.
pub fn bmc_payload(version: &str) -> Vec<u8> {
    let mut v: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    v.extend_from_slice(version.as_bytes());
    v
}

/// Release 7.0.1 signed by a key the nodes do not trust (`key(2)`), in `dir`.
pub fn foreign_bundle(dir: &Path) -> PathBuf {
    build_bundle(dir, "foreign-7.0.1", &Rel::new("7.0.1", "7.0"), &key(2))
}

/// Builds a signed bundle for `rel` in `dir`.
pub fn build_bundle(dir: &Path, name: &str, rel: &Rel, signer: &SecretKey) -> PathBuf {
    build_bundle_sized(dir, name, rel, signer, 600 << 10)
}

/// [`build_bundle`] with `root_bytes` of generated platform root.
pub fn build_bundle_sized(
    dir: &Path,
    name: &str,
    rel: &Rel,
    signer: &SecretKey,
    root_bytes: u64,
) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    let _ = std::fs::remove_dir_all(&src);
    sample::generate_tree(&src.join("rootfs"), root_bytes, 21, rel.platform).unwrap();
    write(&src.join("rootfs/etc/qimg/platform"), rel.platform);
    if let Some(m) = rel.sim_boot {
        write(&src.join("rootfs").join(upgrade::sim::SIM_BOOT), m);
    }
    sample::generate_tree(&src.join("container"), 300 << 10, 22, rel.version).unwrap();
    let entry = src.join("container/entry");
    let script = if rel.healthy_container {
        "#!/bin/sh\necho \"container $QIMG_CONTAINER_VERSION up\"\necho ok > \"$QIMG_HEALTH_FILE\"\nexec sleep 100000\n"
    } else {
        "#!/bin/sh\necho \"container $QIMG_CONTAINER_VERSION: database migration failed\" >&2\nexit 3\n"
    };
    write(&entry, script);
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&entry).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(src.join("uki.efi"), tests::small_uki(PRODUCT, rel.platform)).unwrap();
    let mut spec = format!(
        r#"product = "{PRODUCT}"
version = "{}"
platform_version = "{}"
target = "{}"
compatible_models = [{}]
min_installed_version = "{}"
[platform]
root = "rootfs"
uki = "uki.efi"
[container]
root = "container"
"#,
        rel.version, rel.platform, rel.target, rel.models, rel.min_installed
    );
    if let Some(v) = rel.bmc {
        std::fs::write(src.join("bmc.bin"), bmc_payload(v)).unwrap();
        spec.push_str(&format!(
            "[[firmware]]\ncomponent_id = \"bmc\"\nversion = \"{v}\"\nversion_format = \"triplet\"\nfile = \"bmc.bin\"\n"
        ));
        if let Some(p) = rel.bmc_platforms {
            spec.push_str(&format!("compatible_platforms = [{p}]\n"));
        }
    }
    if let Some((secs, why)) = rel.settle {
        spec.push_str(&format!("[settle]\nseconds = {secs}\nreason = \"{why}\"\n"));
    }
    std::fs::write(src.join("release.toml"), spec).unwrap();
    let out = dir.join(format!("{name}.qimg"));
    tests::build(
        &src.join("release.toml"),
        &out,
        std::slice::from_ref(signer),
    )
    .unwrap();
    std::fs::remove_dir_all(&src).unwrap();
    out
}

/// The bundles every flow uses, built once per test binary.
pub struct Bundles {
    pub dir: PathBuf,
    pub factory: PathBuf,
    pub instant: PathBuf,
    pub platform: PathBuf,
    pub panic: PathBuf,
    pub unhealthy_platform: PathBuf,
    pub bad_container: PathBuf,
    pub public_key: PathBuf,
}

pub fn bundles() -> &'static Bundles {
    static B: OnceLock<Bundles> = OnceLock::new();
    B.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("upgrade-bundles");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let k = key(1);
        let public_key = dir.join("release.pub");
        std::fs::write(&public_key, k.public().to_file_text()).unwrap();
        let b = |name, rel: Rel| build_bundle(&dir, name, &rel, &k);
        Bundles {
            factory: b("factory-7.0.0", Rel::new("7.0.0", "7.0")),
            instant: b("instant-7.0.1", Rel::new("7.0.1", "7.0")),
            platform: b("platform-7.1.0", Rel::new("7.1.0", "7.1")),
            panic: b(
                "panic-7.1.0",
                Rel {
                    sim_boot: Some("panic"),
                    ..Rel::new("7.1.0", "7.1")
                },
            ),
            unhealthy_platform: b(
                "unhealthy-7.1.0",
                Rel {
                    sim_boot: Some("unhealthy"),
                    ..Rel::new("7.1.0", "7.1")
                },
            ),
            bad_container: b(
                "badcontainer-7.0.1",
                Rel {
                    healthy_container: false,
                    ..Rel::new("7.0.1", "7.0")
                },
            ),
            public_key,
            dir,
        }
    })
}

/// True when the tools the fixtures need exist; otherwise the test fails unless
/// QIMG_SKIP_TOOL_TESTS=1 says to skip it.
pub fn have_boot_files() -> bool {
    tests::file_from_package(tests::STUB, "systemd-boot-efi")
        && tests::file_from_package(SYSTEMD_BOOT, "systemd-boot-efi")
}

/// A simulated node; stops its container when dropped.
pub struct SimNode {
    pub dir: tempfile::TempDir,
    pub node: Node,
}

impl SimNode {
    /// The node's agent (on its simulated machine).
    pub fn agent(&self) -> upgrade::Agent {
        upgrade::Agent::new(self.node.clone(), upgrade::machine_for(&self.node))
    }

    /// A slot's partition label.
    pub fn slot_label(&self, slot: bootctl::layout::Slot) -> String {
        self.node.open().unwrap().slot_label(slot).unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `qq upgrade_cluster --path BUNDLE` (prepare, then commit).
    pub fn upgrade(&self, bundle: &Path) -> Output {
        self.qq(&["upgrade_cluster", "--path", bundle.to_str().unwrap()])
    }

    pub fn qq(&self, args: &[&str]) -> Output {
        self.qq_env(args, &[])
    }

    pub fn qq_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.qq_cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    pub fn qq_cmd(&self, args: &[&str]) -> Command {
        // `option_env!`: the agent's tests share these fixtures and have no `qq`.
        let Some(qq) = option_env!("CARGO_BIN_EXE_qq") else {
            panic!("qq is built only for the qq crate's tests")
        };
        let mut c = Command::new(qq);
        c.arg("--node").arg(self.path()).args(args);
        c.env_remove("QIMG_PAUSE_AT").env_remove("QQ_NODE");
        c
    }

    /// `qq upgrade_status` parsed.
    pub fn status(&self) -> serde_json::Value {
        let o = self.qq(&["upgrade_status"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn disk(&self) -> Vec<u8> {
        std::fs::read(&self.node.config.disk).unwrap()
    }

    /// The byte ranges of a slot's root and verity partitions.
    pub fn slot_bytes(&self, slot: bootctl::layout::Slot) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.node.config.disk).unwrap();
        let t = bootctl::table::read(&mut f).unwrap();
        let p = bootctl::slot::parts(&t, slot).unwrap();
        let d = self.disk();
        let mut out = d[p.root.1 as usize..(p.root.1 + p.root.2) as usize].to_vec();
        out.extend_from_slice(&d[p.verity.1 as usize..(p.verity.1 + p.verity.2) as usize]);
        out
    }

    pub fn entries(&self) -> Vec<String> {
        let mut io = self.node.open().unwrap();
        let mut v = io.esp.list(bootctl::entries::LINUX_DIR).unwrap();
        v.sort();
        v
    }

    pub fn running(&self) -> upgrade::node::Running {
        self.node.running(&mut self.node.open().unwrap()).unwrap()
    }

    /// The installed release (the active container), as text.
    pub fn version(&self) -> Option<String> {
        self.running().version.map(|v| v.to_string())
    }

    /// The running container's release, as text.
    pub fn container(&self) -> Option<String> {
        upgrade::container::runtime(
            &self.node.config.runtime,
            &self.node.config.state.join("run"),
        )
        .running()
        .unwrap()
        .map(|v| v.to_string())
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let _ = upgrade::container::runtime(
            &self.node.config.runtime,
            &self.node.config.state.join("run"),
        )
        .stop();
    }
}

/// A simulated node made from the shared 7.0.0 factory bundle, or `None` when the
/// boot files are missing and QIMG_SKIP_TOOL_TESTS=1 says to skip (else the test
/// fails with the reason).
pub fn factory_node() -> Option<SimNode> {
    have_boot_files().then(|| sim_node(&bundles().factory))
}

/// A simulated node made from `factory`: `imagebuild disk`, then `sim::create`.
pub fn sim_node(factory: &Path) -> SimNode {
    sim_node_with(factory, None)
}

/// A simulated node with firmware devices (`devices` is written as qfirmware's
/// device configuration into the node directory).
pub fn sim_node_with(factory: &Path, devices: Option<serde_json::Value>) -> SimNode {
    let b = bundles();
    let dir = tempfile::tempdir().unwrap();
    let keys = TrustedKeys::new([key(1).public()]);
    let img = dir.path().join("disk.img");
    imagebuild::disk::build(&DiskOptions {
        bundle: factory,
        keys: Some(&keys),
        out: &img,
        size: None,
        systemd_boot: Path::new(SYSTEMD_BOOT),
        target: Target::Onprem,
        esp_mib: 64,
        root_mib: Some(8),
        data_mib: 8,
        progress: &NoProgress,
        cancel: &imagebuild::Cancel::new(),
    })
    .unwrap();
    let firmware = devices.map(|d| {
        let p = dir.path().join("devices.json");
        std::fs::write(&p, d.to_string()).unwrap();
        upgrade::node::FirmwareConfig {
            devices: p,
            sysroot: dir.path().join("sysroot"),
        }
    });
    let node = upgrade::sim::create(&upgrade::sim::CreateOptions {
        dir: dir.path(),
        disk: &img,
        bundle: factory,
        keys: std::slice::from_ref(&b.public_key),
        model: MODEL,
        target: Target::Onprem,
        firmware,
        health_timeout_secs: 2,
    })
    .unwrap();
    SimNode { dir, node }
}

/// The test user of an agent and its password.
pub const AGENT_USER: &str = "admin";
pub const AGENT_PASSWORD: &str = "qimgd-test-password";

/// Where a test agent listens unless told: 127.0.0.1 and 127.0.0.2, ports chosen
/// by the kernel.
pub const AGENT_LISTEN: &[&str] = &["127.0.0.1:0", "127.0.0.2:0"];

/// An agent's directory for `node`: `qimgd.toml` (listening on `listen`, and a
/// Unix socket `run/rest.sock`; upgrade directory `upgrade` (default `upgrade/`,
/// created); quick simulated reboots) plus `extra` lines, and a users file with
/// the test user. Returns the config file.
pub fn agent_config(
    node: &SimNode,
    dir: &Path,
    listen: &[&str],
    upgrade: Option<&Path>,
    extra: &str,
) -> PathBuf {
    let upgrade = upgrade.map_or_else(|| dir.join("upgrade"), Path::to_owned);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(&upgrade).unwrap();
    let config = dir.join("qimgd.toml");
    // `extra` ends with its `[sim]` table, if it has one. A simulated node gets
    // quick simulated reboots unless that table says otherwise; a node made real
    // (`node.toml` edited) gets no table.
    let (top, sim) = extra.split_once("[sim]\n").unwrap_or((extra, ""));
    let simulated = std::fs::read_to_string(&node.node.config_path)
        .unwrap()
        .contains("simulated = true");
    let sim = if simulated || !sim.is_empty() {
        let times: String = [("shutdown_ms", 1000), ("boot_ms", 300)]
            .iter()
            .filter(|(k, _)| !sim.contains(k))
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        format!("[sim]\n{sim}{times}")
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!(
            "listen = {listen:?}\nsocket = \"run/rest.sock\"\nnode = \"{}\"\nstate = \"state\"\nusers = \"users.json\"\nupgrade_dir = \"{}\"\n{top}{sim}",
            node.path().display(),
            upgrade.display(),
        ),
    )
    .unwrap();
    let mut users = qimgd::users::Users::load(&dir.join("users.json")).unwrap();
    users.add(AGENT_USER, AGENT_PASSWORD).unwrap();
    users.save(&dir.join("users.json")).unwrap();
    config
}

/// Adds the test user to a cluster's users (in its etcd, through the node whose
/// cluster directory is `dir`), as `qimgd user add` on one node does: a node of a
/// cluster does not read its users file.
pub fn add_cluster_user(dir: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = qimgd::accounts::connect(dir).await.unwrap();
        qimgd::accounts::edit_cluster_users(&store, |u| u.add(AGENT_USER, AGENT_PASSWORD))
            .await
            .unwrap();
    });
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

/// A journal of the test's own: a datagram socket the agents send their events
/// to (`journal_socket`), in the journal's native protocol, collected by a
/// thread until dropped.
pub struct Journal {
    pub path: PathBuf,
    entries: std::sync::Arc<std::sync::Mutex<Vec<HashMap<String, String>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Journal {
    pub fn start() -> Journal {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let s = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let entries = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (e, st) = (entries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0; 256 << 10];
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = s.recv(&mut buf) {
                    // Kept either way: a panic here would only stop the
                    // collecting, and the test would fail on a missing event.
                    let entry = match qimgd::events::parse_entry(&buf[..n]) {
                        Some(fields) => fields.into_iter().collect(),
                        None => HashMap::from([(
                            "UNREADABLE".to_string(),
                            String::from_utf8_lossy(&buf[..n]).into_owned(),
                        )]),
                    };
                    e.lock().unwrap().push(entry);
                }
            }
        });
        Journal {
            path,
            entries,
            stop,
            _dir: dir,
        }
    }

    /// The config line that sends an agent's events here.
    pub fn config(&self) -> String {
        format!("journal_socket = \"{}\"\n", self.path.display())
    }

    /// The entries of one event kind (`QIMG_EVENT`), in the order received;
    /// an entry not in the journal's native protocol fails the test.
    pub fn events(&self, kind: &str) -> Vec<HashMap<String, String>> {
        self.all()
            .iter()
            .filter(|e| e.get("QIMG_EVENT").map(String::as_str) == Some(kind))
            .cloned()
            .collect()
    }

    /// [`Journal::events`] once there are at least `n` of `kind`, waiting at
    /// most `limit`: a coordinator tells an event after it wrote the record
    /// that holds it, so a reader of the record may be a moment ahead.
    pub fn wait_events(
        &self,
        kind: &str,
        n: usize,
        limit: std::time::Duration,
    ) -> Vec<HashMap<String, String>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let got = self.events(kind);
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} {kind:?} event(s) not told within {limit:?}: {:?}",
                self.all()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Every entry received; one not in the journal's native protocol fails
    /// the test.
    pub fn all(&self) -> Vec<HashMap<String, String>> {
        let all = self.entries.lock().unwrap().clone();
        if let Some(bad) = all.iter().find_map(|e| e.get("UNREADABLE")) {
            panic!("an entry not in the journal's native protocol: {bad:?}");
        }
        all
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
