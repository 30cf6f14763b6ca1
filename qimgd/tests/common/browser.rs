//! A real browser for the Web UI's tests: Debian's headless Chromium driven
//! through its `chromedriver` (WebDriver) with `fantoccini`. Every wait is
//! bounded and names what it waited for; every state a test reaches can be saved
//! as a screenshot (artifacts under `$CARGO_TARGET_TMPDIR/webui/`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// Set to `1` to skip the browser tests where Chromium is missing (they fail
/// otherwise).
pub const OPT_OUT: &str = "QIMG_SKIP_BROWSER_TESTS";

/// How long a step may take to show on the page.
pub const STEP_LIMIT: Duration = Duration::from_secs(30);

const CHROMIUM: &str = "/usr/bin/chromium";

/// The states docs/web-ui.md shows.
const FOR_DOCS: &[&str] = &[
    "login",
    "refused",
    "blocked",
    "confirm-rolling",
    "restriping",
    "moved-to-another-node",
    "rolling-done",
    "rolling-back",
    "rolled-back",
    "phone",
    "canary",
    "finalizable",
    "rollback-dialog",
    "rolled-back-on-request",
];
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session and its driver.
pub struct Browser {
    driver: Child,
    /// The WebDriver session.
    pub c: Client,
    /// Where this test's screenshots go.
    pub artifacts: PathBuf,
    shots: usize,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share their own process group:
        // killing only the driver left every browser of every run behind, orphaned.
        // SAFETY: a signal to the group this test created (`process_group(0)`).
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at `width`×`height`; `None`
    /// (skipped) only with `QIMG_SKIP_BROWSER_TESTS=1`.
    pub async fn start(test: &str, width: u32, height: u32) -> Option<Browser> {
        let present = Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file();
        if !qutil::require::require(
            present,
            "Chromium and chromedriver (Debian's chromium, chromium-driver)",
            "`cargo xtask ci` installs them with apt",
            OPT_OUT,
        ) {
            return None;
        }
        // The workspace's rustls has aws-lc-rs and ring both enabled by some crate.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = tests::etcd::free_port();
        let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("webui")
            .join(test);
        let _ = std::fs::remove_dir_all(&artifacts);
        // Chromium's profile and scoped dirs go under the test's own directory,
        // not /tmp, where a killed session would leave them behind.
        let tmp = artifacts.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("TMPDIR", &tmp)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(artifacts.join("chromedriver.log")).unwrap())
            .spawn()
            .expect("chromedriver starts");
        let caps = serde_json::json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    // No crash handler: it leaves its own session and outlives the test.
                    "--disable-breakpad",
                    "--disable-crash-reporter",
                    // Each simulated node has its own self-signed certificate.
                    "--ignore-certificate-errors",
                    format!("--window-size={width},{height}"),
                ],
            },
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let limit = Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        let c = loop {
            match ClientBuilder::rustls()
                .expect("rustls roots")
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver within {limit:?}: {e}"),
            }
        };
        Some(Browser {
            driver,
            c,
            artifacts,
            shots: 0,
        })
    }

    /// Saves a screenshot of the page as `NN-name.png`; returns its path.
    pub async fn shot(&mut self, name: &str) -> PathBuf {
        self.shots += 1;
        let p = self.artifacts.join(format!("{:02}-{name}.png", self.shots));
        let png = self.c.screenshot().await.expect("a screenshot");
        std::fs::write(&p, png).unwrap();
        // For the user documentation: QIMG_WEBUI_DOCS=<dir> copies the main
        // states there (docs/web-ui.md shows them).
        if let Some(d) = std::env::var_os("QIMG_WEBUI_DOCS")
            && FOR_DOCS.contains(&name)
        {
            std::fs::copy(&p, Path::new(&d).join(format!("{name}.png"))).unwrap();
        }
        p
    }

    /// The text of `css`, or `None` while it is missing or hidden.
    pub async fn text(&self, css: &str) -> Option<String> {
        let e = self.c.find(Locator::Css(css)).await.ok()?;
        if !e.is_displayed().await.unwrap_or(false) {
            return None;
        }
        e.text().await.ok()
    }

    /// Whether `css` is displayed.
    pub async fn shown(&self, css: &str) -> bool {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Whether `css` is enabled.
    pub async fn enabled(&self, css: &str) -> bool {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.is_enabled().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Waits until `css` shows a text containing `want`; returns the text. Past
    /// `limit` it saves a screenshot and fails naming what it waited for.
    pub async fn wait_text(&mut self, css: &str, want: &str, limit: Duration) -> String {
        self.wait_for(&format!("{css} to show {want:?}"), limit, css, |t| {
            t.contains(want)
        })
        .await
    }

    /// Waits until `css` shows a text that `ok` accepts.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        css: &str,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Some(t) = self.text(css).await {
                if ok(&t) {
                    return t;
                }
                last = Some(t);
            }
            if Instant::now() >= deadline {
                let shot = self.shot("timeout").await;
                let page = self
                    .text("main")
                    .await
                    .unwrap_or_else(|| "(no main)".into());
                panic!(
                    "waited {limit:?} for {what}; it showed {last:?}\nscreenshot {}\npage: {page}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.c.find(Locator::Css(css)).await.expect(css);
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    /// Clicks `css`.
    pub async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .expect(css)
            .click()
            .await
            .expect("click");
    }

    /// Logs in as `user` from the login form.
    pub async fn log_in(&mut self, user: &str, password: &str) {
        self.wait_for("the login form", STEP_LIMIT, "#login-title", |_| true)
            .await;
        self.fill("#user", user).await;
        self.fill("#password", password).await;
        self.click("#login-button").await;
    }
}
