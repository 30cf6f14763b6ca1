//! The one list of what this project needs from the system: every Debian package,
//! what it is for, how its presence is checked, and which entry points need it.
//! Pure data, no dependencies: `xtask` installs from it (`deps/mod.rs`), the
//! `tests` crate names packages from it in its failure messages, and
//! `cargo xtask fresh-root` proves it complete on a new Debian root.
//! Nothing else in the project installs a Debian package.

/// What a package is needed for; each entry point ensures the groups it needs
/// before it builds anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// Building the workspace (build scripts: `etcd-client` compiles etcd's
    /// protocol with `protoc` and Google's well-known `.proto` files).
    Build,
    /// The README's demos: a cluster of simulated nodes on etcd, releases with UKIs.
    Demo,
    /// The test suite (`cargo xtask ci`'s tests).
    Test,
    /// `cargo xtask bench`: the standard tools we are compared with.
    Bench,
    /// `cargo xtask qemu-test`: the boot chain and the real node under QEMU.
    Qemu,
    /// `cargo xtask fresh-root`: the minimal Debian root it builds.
    FreshRoot,
}

impl Group {
    /// Every group, in order.
    pub const ALL: [Group; 6] = [
        Group::Build,
        Group::Demo,
        Group::Test,
        Group::Bench,
        Group::Qemu,
        Group::FreshRoot,
    ];

    /// Its name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Group::Build => "build",
            Group::Demo => "demo",
            Group::Test => "test",
            Group::Bench => "bench",
            Group::Qemu => "qemu",
            Group::FreshRoot => "fresh-root",
        }
    }

    /// The group of a name.
    pub fn parse(s: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == s)
    }
}

/// How a package's presence is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// A program on `PATH`, and the arguments that make it print its version (or
    /// its usage, for tools with no version option that exits 0)
    /// (run by `cargo xtask deps --run`, so a program that is there but cannot run,
    /// say for a missing library, is caught too).
    Tool(&'static str, &'static [&'static str]),
    /// A file the package installs (headers, EFI binaries, firmware).
    File(&'static str),
    /// A command that must succeed (a Python module, which is neither).
    Runs(&'static [&'static str]),
}

impl Check {
    /// What is checked, in words for messages.
    pub fn what(self) -> String {
        match self {
            Check::Tool(t, _) => format!("the tool {t}"),
            Check::File(p) => p.to_owned(),
            Check::Runs(argv) => format!("`{}`", argv.join(" ")),
        }
    }
}

/// One thing the project needs from the system.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    /// The Debian package that provides it.
    pub package: &'static str,
    /// How its presence is checked.
    pub check: Check,
    /// The entry points' groups that need it.
    pub groups: &'static [Group],
    /// What it is for.
    pub why: &'static str,
    /// Other programs of the same package the project runs (checked on `PATH`).
    pub also: &'static [&'static str],
}

use Check::{File, Runs, Tool};
use Group::{Bench, Build, Demo, FreshRoot, Qemu, Test};

/// The systemd EFI stub UKIs are built from.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Everything, one entry per checked thing (a package may have several).
pub const NEEDS: &[Need] = &[
    // Building.
    Need {
        package: "protobuf-compiler",
        check: Tool("protoc", &["--version"]),
        groups: &[Build],
        why: "etcd-client's build script compiles etcd's gRPC protocol with protoc",
        also: &[],
    },
    Need {
        package: "libprotobuf-dev",
        check: File("/usr/include/google/protobuf/descriptor.proto"),
        groups: &[Build],
        why: "the well-known .proto files etcd's protocol imports (descriptor, struct)",
        also: &[],
    },
    // The demos (and the tests and benches that run a cluster).
    Need {
        package: "etcd-server",
        check: Tool("etcd", &["--version"]),
        groups: &[Demo, Test, Bench],
        why: "the cluster's state: one etcd member per voting node",
        also: &[],
    },
    Need {
        package: "etcd-client",
        check: Tool("etcdctl", &["version"]),
        groups: &[Demo, Test, Bench],
        why: "reading the plan and the coordinator key from outside the agents",
        also: &[],
    },
    Need {
        package: "systemd-boot-efi",
        check: File(STUB),
        groups: &[Demo, Test, Bench, Qemu],
        why: "the EFI stub every release's UKI is built from",
        also: &[],
    },
    Need {
        package: "systemd-boot-efi",
        check: File("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
        groups: &[Test, Qemu],
        why: "the boot loader imagebuild disk installs on the ESP",
        also: &[],
    },
    // The tests: every format checked by its own tool.
    Need {
        package: "squashfs-tools",
        check: Tool("unsquashfs", &["-help"]),
        groups: &[Test, Bench],
        why: "slot images are checked by unsquashfs",
        also: &[],
    },
    Need {
        package: "squashfs-tools",
        check: Tool("mksquashfs", &["-version"]),
        groups: &[Bench],
        why: "the bundle bench's baseline builds the image with mksquashfs",
        also: &[],
    },
    Need {
        package: "cryptsetup-bin",
        check: Tool("veritysetup", &["--version"]),
        groups: &[Test, Bench],
        why: "dm-verity hash trees are checked (and, in the bench, built) by veritysetup",
        also: &[],
    },
    Need {
        package: "minisign",
        check: Tool("minisign", &["-v"]),
        groups: &[Test, Bench],
        why: "bundle signatures are checked by minisign",
        also: &[],
    },
    Need {
        package: "zstd",
        check: Tool("zstd", &["--version"]),
        groups: &[Test, Bench],
        why: "compressed payloads are checked by zstd",
        also: &[],
    },
    Need {
        package: "tar",
        check: Tool("tar", &["--version"]),
        groups: &[Test, Bench],
        why: "a bundle is a tar archive, listed and unpacked by tar",
        also: &[],
    },
    Need {
        package: "gdisk",
        check: Tool("sgdisk", &["--version"]),
        groups: &[Test],
        why: "GPT disks are checked by sgdisk",
        also: &[],
    },
    Need {
        package: "binutils",
        check: Tool("objdump", &["--version"]),
        groups: &[Test],
        why: "UKI sections are checked by objdump",
        also: &[],
    },
    Need {
        package: "binutils",
        check: Tool("objcopy", &["--version"]),
        groups: &[Qemu],
        why: "the node's UKI is rebuilt with objcopy for a damaged-slot scenario",
        also: &[],
    },
    Need {
        package: "dosfstools",
        check: Tool("fsck.vfat", &["--help"]),
        groups: &[Test],
        why: "ESPs are checked by fsck.vfat",
        also: &[],
    },
    Need {
        package: "mtools",
        check: Tool("mdir", &["-V"]),
        groups: &[Test],
        why: "ESP contents are listed and read by mdir and mtype",
        also: &["mtype"],
    },
    Need {
        package: "openssl",
        check: Tool("openssl", &["version"]),
        groups: &[Test, Bench],
        why: "certificates and digests are checked by openssl",
        also: &[],
    },
    Need {
        package: "chromium",
        check: Tool("chromium", &["--version"]),
        groups: &[Test],
        why: "the Web UI's tests run headless Chromium",
        also: &[],
    },
    Need {
        package: "chromium-driver",
        check: Tool("chromedriver", &["--version"]),
        groups: &[Test],
        why: "the Web UI's tests drive Chromium over WebDriver",
        also: &[],
    },
    Need {
        package: "python3-venv",
        check: Runs(&["python3", "-c", "import ensurepip, venv"]),
        groups: &[Test, Bench],
        why: "Qumulo's qq client and the AWS emulator are pip packages in their own venvs",
        also: &["python3"],
    },
    // Benches.
    Need {
        package: "coreutils",
        check: Tool("sha256sum", &["--version"]),
        groups: &[Bench],
        why: "the verify bench's baseline",
        also: &[],
    },
    Need {
        package: "openssh-server",
        check: File("/usr/sbin/sshd"),
        groups: &[Bench],
        why: "the distribute bench's baseline: scp to each simulated node through an sshd of the bench's own on loopback",
        also: &[],
    },
    // QEMU.
    Need {
        package: "qemu-system-x86",
        check: Tool("qemu-system-x86_64", &["--version"]),
        groups: &[Qemu],
        why: "the boot chain and the real node run under QEMU",
        also: &[],
    },
    Need {
        package: "ovmf",
        check: File("/usr/share/ovmf/OVMF.fd"),
        groups: &[Qemu],
        why: "Debian's UEFI firmware (qemu-test --firmware debian)",
        also: &[],
    },
    Need {
        package: "mmdebstrap",
        check: Tool("mmdebstrap", &["--version"]),
        groups: &[Qemu, FreshRoot],
        why: "the node's Debian base, and the fresh root, are made by mmdebstrap",
        also: &[],
    },
    Need {
        package: "openssh-client",
        check: Tool("ssh", &["-V"]),
        groups: &[Qemu, Bench],
        why: "the host reaches the test node's shell with ssh, scp and ssh-keygen; the distribute bench copies with scp",
        also: &["scp", "ssh-keygen"],
    },
];

/// Programs the project runs that a new machine has before anything is
/// installed (Debian's essential set, `build-essential` and the Rust toolchain,
/// which the README asks for): `fresh-root` proves each is there first.
pub const BASE_PROGRAMS: &[&str] = &[
    "apt-cache",
    "apt-get",
    "bash",
    "chown",
    "cmp",
    "cp",
    "dd",
    "dpkg",
    "id",
    "kill",
    "rustc",
    "sync",
    "timeout",
    "true",
    "unshare",
];

/// The needs of some groups, in list order.
pub fn needs_of(groups: &[Group]) -> impl Iterator<Item = &'static Need> + '_ {
    NEEDS
        .iter()
        .filter(move |n| n.groups.iter().any(|g| groups.contains(g)))
}

/// The packages of some needs, each once, in list order.
pub fn packages<'a>(needs: impl Iterator<Item = &'a Need>) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = vec![];
    for n in needs {
        if !out.contains(&n.package) {
            out.push(n.package);
        }
    }
    out
}

/// The programs an entry provides: its checked tool and the others it names.
pub fn programs(n: &Need) -> impl Iterator<Item = &'static str> {
    let tool = match n.check {
        Check::Tool(t, _) => Some(t),
        _ => None,
    };
    tool.into_iter().chain(n.also.iter().copied())
}

/// The package that provides a program, if the list has it.
pub fn package_of_tool(tool: &str) -> Option<&'static str> {
    NEEDS
        .iter()
        .find(|n| programs(n).any(|t| t == tool))
        .map(|n| n.package)
}
