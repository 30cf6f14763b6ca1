//! An OpenSSH server of the bench's own on 127.0.0.1, for baselines that copy
//! with `scp`: Debian's `/usr/sbin/sshd` (package `openssh-server`) in the
//! foreground with a configuration, host key and client key made in a directory
//! of the bench, root logins by that key only. The system's own sshd (if any) is
//! neither used nor touched; the server dies when this is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server's program: sshd must be started by its absolute path (it
/// re-executes itself for every connection).
pub const SSHD: &str = "/usr/sbin/sshd";
/// The fastest cipher here (AES-NI): aes128-gcm copied a 128 MiB file on
/// loopback faster than chacha20-poly1305, OpenSSH's default.
pub const CIPHER: &str = "aes128-gcm@openssh.com";
/// How long the server may take to answer.
const START_LIMIT: Duration = Duration::from_secs(20);

pub(crate) struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// A new ed25519 key pair at `path` (and `path.pub`), without a passphrase.
pub(crate) fn keygen(path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !ok.success() {
        return Err(format!("ssh-keygen -f {} failed ({ok})", path.display()));
    }
    Ok(())
}

impl Sshd {
    /// Starts a server on a free loopback port with its files in `dir`.
    pub(crate) fn start(dir: &Path) -> Result<Sshd, String> {
        if !Path::new(SSHD).exists() {
            return Err(format!(
                "{SSHD} is missing (package openssh-server, in the bench group of `cargo xtask deps`)"
            ));
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let (host, key) = (dir.join("host_key"), dir.join("client_key"));
        keygen(&host)?;
        keygen(&key)?;
        std::fs::copy(key.with_extension("pub"), dir.join("authorized_keys")).map_err(io)?;
        // sshd refuses to start without its privilege separation directory,
        // which the system's service (not the package) makes at boot.
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io)?
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile none\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 64\n",
                host.display(),
                dir.join("authorized_keys").display()
            ),
        )
        .map_err(io)?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).map_err(io)?)
            .spawn()
            .map_err(|e| format!("{SSHD}: {e}"))?;
        let mut s = Sshd { child, port, key };
        let start = Instant::now();
        loop {
            let up = Command::new("ssh")
                .args(s.options())
                .args(["-p", &port.to_string(), "root@127.0.0.1", "true"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success());
            if up {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!(
                    "sshd exited ({st}): {}",
                    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                ));
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "sshd on 127.0.0.1:{port} let no login in within {START_LIMIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn options(&self) -> Vec<String> {
        let mut v = client_options(&self.key);
        v.extend(["-c".into(), CIPHER.into()]);
        v
    }

    /// `scp` of `from` to `to` on this server (as root).
    pub(crate) fn scp(&self, from: &Path, to: &Path) -> Command {
        let mut c = Command::new("scp");
        c.args(self.options())
            .args(["-q", "-P", &self.port.to_string()])
            .arg(from)
            .arg(format!("root@127.0.0.1:{}", to.display()))
            .stdin(Stdio::null());
        c
    }
}

/// `ssh`/`scp` options for a test machine reached with `key`: no host key
/// kept or checked (each run makes new ones), never a prompt, 20 s to connect.
pub(crate) fn client_options(key: &Path) -> Vec<String> {
    let mut v = vec!["-i".to_owned(), key.display().to_string()];
    for o in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "BatchMode=yes",
        "ConnectTimeout=20",
    ] {
        v.push("-o".into());
        v.push(o.into());
    }
    v
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
