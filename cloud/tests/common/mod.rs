//! A private moto server per test (127.0.0.1, ephemeral port), stopped on drop,
//! and SDK clients pointed at it for checking what `qcloud` did. Mocked nowhere.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloud::AwsOptions;

/// Where the moto server is: `QIMG_MOTO_SERVER`, the pinned venv `cargo xtask ci`
/// installs, or `moto_server` on PATH.
pub fn moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QIMG_MOTO_SERVER") {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let pinned = PathBuf::from(home).join(".cache/qimg/moto-5.2.5/bin/moto_server");
    if pinned.is_file() {
        return Some(pinned);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("moto_server"))
            .find(|f| f.is_file())
    })
}

/// A running moto server.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts one, or returns `None` when moto is missing and the person running
    /// the tests opted out with `QIMG_SKIP_EMULATOR=1`. Without the opt-out a
    /// missing moto fails the test with the reason.
    pub fn start() -> Option<Moto> {
        let server = moto_server();
        if !qutil::require::require(
            server.is_some(),
            "the AWS emulator (moto_server)",
            "`cargo xtask ci` installs moto[server,ec2,ebs,ssm]==5.2.5 with pip",
            "QIMG_SKIP_EMULATOR",
        ) {
            return None;
        }
        let server = server.expect("required above");
        // The venv's python runs our launcher (a RegisterImage that keeps what AWS
        // keeps), then moto's own server.
        let python = server.with_file_name("python3");
        let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto_launch.py");
        assert!(
            python.is_file(),
            "no python3 next to {} to run the moto launcher",
            server.display()
        );
        let mut child = Command::new(&python)
            .arg(launcher)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
        let err = child.stderr.take().unwrap();
        let mut lines = BufReader::new(err).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{} exited before listening", server.display()))
                .unwrap();
            if let Some(url) = line.split("Running on ").nth(1) {
                break url.trim().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Some(Moto { child, endpoint })
    }

    pub fn aws(&self, region: &str) -> AwsOptions {
        AwsOptions {
            region: region.into(),
            endpoint_url: Some(self.endpoint.clone()),
            profile: None,
            attempt_timeout: Duration::from_secs(20),
            operation_timeout: Duration::from_secs(30),
            static_credentials: Some(("testing".into(), "testing".into())),
        }
    }

    pub async fn conf(&self, region: &str) -> aws_config::SdkConfig {
        cloud::sdk_config(&self.aws(region), region).await
    }

    /// `qcloud publish` with dummy credentials pointed at this server.
    pub fn qcloud(&self) -> Command {
        let mut c = qcloud_publish(&self.endpoint);
        c.args(["--poll", "1"]);
        c
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `qcloud publish` with dummy credentials (no profile, no instance metadata) and
/// every AWS service at `endpoint`.
pub fn qcloud_publish(endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qcloud"));
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("QCLOUD_FAIL_AT")
        .args(["-q", "publish", "--endpoint-url", endpoint]);
    c
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
