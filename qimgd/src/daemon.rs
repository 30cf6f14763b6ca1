//! `qimgd serve`: load everything, bind, serve until SIGTERM/SIGINT, then cancel a
//! running prepare and wait for the engine to bring the node to rest.
//!
//! On a machine whose power button is software (a simulated node) the agent
//! also plays its reboots: [`crate::power`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use upgrade::Agent;
use upgrade::node::Node;

use crate::api::{App, Shared};
use crate::config::Config;
use crate::error::Error;
use crate::identity::Identity;
use crate::jobs::Jobs;
use crate::server::Listeners;
use crate::throttle::Throttle;
use crate::tls::{self, TlsFiles};
use crate::token::TokenKey;

/// How long the registration goes without reading what the node runs again
/// when no job ended and the node did not boot.
const INFO_MAX_AGE: Duration = Duration::from_secs(60);

/// What the node registered, read after which job and boot (`Jobs::ends`,
/// `App::up_since_ms`), and when.
type CachedInfo = ((u64, u64), Instant, qcluster::NodeInfo);

/// How long a shutdown waits for a cancelled operation to end.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

/// Loads the node, keys, identity and TLS files of `config`; generates what is
/// missing (self-signed certificate, token key, identity). Returns the state and
/// the TLS configuration, and says on stderr what it generated.
pub fn build(
    config: &Config,
    in_process: Option<&InProcess>,
) -> Result<(Shared, Arc<rustls::ServerConfig>), Error> {
    let node = Node::load(&config.node).map_err(Error::Engine)?;
    let product = node.open().map_err(Error::Engine)?.product;
    // Everything simulated comes from `[sim]`, which only a simulated node has.
    let sim = config.sim_of(node.config.simulated)?;
    let safety = crate::restriper::Source::of(config.restriper_probe.as_deref(), sim.as_ref());
    let config = &Config {
        sim,
        ..config.clone()
    };
    let machine = upgrade::machine_for(&node);
    let agent = Arc::new(Agent::new(node, machine));
    // A node of a cluster: its CA-issued certificate on the API port (so
    // `qq --ca-cert <cluster ca.crt>` verifies every node), and the cluster's CA
    // to recognize other nodes by theirs.
    let node_dir = match in_process {
        Some(_) => None,
        None => config
            .cluster
            .as_deref()
            .map(qcluster::create::NodeDir::new),
    };
    let files = match (&config.tls_cert, &config.tls_key, &node_dir) {
        (Some(cert), Some(key), _) => TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        (_, _, Some(d)) => TlsFiles {
            cert: d.cert(),
            key: d.key(),
        },
        _ => {
            let files = TlsFiles::generated(&config.state);
            let mut names = vec![
                "localhost".to_string(),
                crate::api::hostname(),
                "127.0.0.1".into(),
                "::1".into(),
            ];
            names.extend(config.listen.iter().map(|a| a.ip().to_string()));
            names.retain(|n| n != "0.0.0.0" && n != "::");
            names.sort();
            names.dedup();
            if tls::ensure_self_signed(&files, &names)? {
                crate::log(&format!(
                    "generated a self-signed certificate {} (key {}, mode 0600)",
                    files.cert.display(),
                    files.key.display()
                ));
            }
            files
        }
    };
    let client_ca = node_dir.as_ref().map(|d| d.ca());
    let tls = tls::server_config(&files, client_ca.as_deref())?;
    let lease = Duration::from_secs(config.cluster_lease_secs.max(1));
    let cluster = match (in_process, &config.cluster) {
        (Some(p), _) => {
            crate::cluster::ClusterCtx::in_process(p.membership.clone(), p.local.clone(), lease)
        }
        (None, Some(dir)) => crate::cluster::ClusterCtx::load(dir, lease)?,
        // A node in no cluster is a cluster of one, its plan in its state.
        (None, None) => crate::cluster::ClusterCtx::alone(
            config.node_id,
            &crate::api::hostname(),
            config
                .listen
                .first()
                .copied()
                .unwrap_or_else(|| ([127, 0, 0, 1], 8000).into()),
            &config.state.join(crate::cluster::ALONE_STORE),
            lease,
        )?,
    };
    // In a cluster every node signs tokens with the cluster's key.
    let token_key = match &cluster.dir {
        Some(d) => d.token_key(),
        None => config.state.join("token.key"),
    };
    // Answers name the cluster's paths, never this node's directories.
    crate::api::redact::hide(&config.upgrade_dir, "", "the upgrade directory");
    crate::api::redact::hide(&config.state, "<agent state>", "<agent state>");
    crate::api::redact::hide(&agent.node().config.state, "<node state>", "<node state>");
    let swept = crate::images::sweep(&config.upgrade_dir);
    if swept > 0 {
        crate::log(&format!(
            "removed {swept} upload(s) a stop cut off from {}",
            config.upgrade_dir.display()
        ));
    }
    let app = Arc::new(App {
        config: config.clone(),
        agent,
        product,
        users: config.users.clone(),
        keys: crate::token_keys::Keys::new(TokenKey::load_or_create(&token_key)?),
        throttle: Throttle::default(),
        admission: crate::admission::Admission::new(crate::admission::total_cap(
            crate::admission::nofile(),
        )),
        checks: crate::throttle::Checks::default(),
        hashing: Arc::new(tokio::sync::Semaphore::new(crate::throttle::HASH_SLOTS)),
        jobs: Arc::new(Jobs::default()),
        identity: Identity::load_or_create(&config.state.join("identity.json"))?,
        down: AtomicBool::new(false),
        cancel: upgrade::Cancel::new(),
        cluster,
        reported: std::sync::Mutex::new((0, 0)),
        uploads: crate::images::Uploads::default(),
        pacer: crate::images::Pacer::new(config.peer_serve_mib_per_s),
        serving: Arc::new(tokio::sync::Semaphore::new(crate::images::MAX_SERVES)),
        power_off: tokio::sync::Notify::new(),
        changes: tokio::sync::watch::Sender::new(0),
        vacancy: tokio::sync::watch::Sender::new(0),
        up_since_ms: std::sync::atomic::AtomicU64::new(qcluster::plan::now_ms()),
        stepping_down: AtomicBool::new(false),
        coordinating: AtomicBool::new(false),
        safety,
    });
    Ok((app, tls))
}

/// What this node registers: who it is, what it runs.
fn node_info(app: &Shared, c: &crate::cluster::ClusterCtx) -> qcluster::NodeInfo {
    let me = c.me();
    let node = app.agent.node();
    let installed = node.containers().installed().ok().and_then(|i| i.active);
    // The booted slot reads the ESP: off the async threads.
    let slot = tokio::task::block_in_place(|| {
        node.open()
            .and_then(|mut o| node.running(&mut o))
            .ok()
            .map(|r| r.slot.to_string())
    });
    qcluster::NodeInfo {
        id: me.id,
        name: me.name.clone(),
        uuid: app.identity.node_uuid.clone(),
        address: me.agent.to_string(),
        model: node.config.model.clone(),
        installed,
        slot,
        health: "online".into(),
    }
}

/// Connects to the cluster's etcd (retrying every second until it answers;
/// a node alone has its store from the start), then keeps this node
/// registered. Runs until dropped.
pub async fn join(app: Shared) {
    let c = &app.cluster;
    let store = match (c.store(), &c.dir) {
        (Some(s), _) => s.clone(),
        (None, None) => unreachable!("a store that is not etcd is there from the start"),
        (None, Some(dir)) => {
            let mut logged = false;
            let store = loop {
                match qcluster::Store::connect(&c.membership, dir, crate::cluster::ETCD_LIMIT).await
                {
                    Ok(s) => break s,
                    Err(e) => {
                        if !logged {
                            crate::log(&format!(
                                "the cluster's etcd is not reachable yet ({e}); retrying every second"
                            ));
                            logged = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            c.set_store(store.clone());
            crate::log("connected to the cluster's etcd");
            // Said once: a node's certificate can write any key until the
            // operator turns etcd's access control on.
            match store.confined().await {
                Ok(true) => {}
                Ok(false) => crate::log(
                    "WARNING: etcd's authentication is off: any node's certificate may write any key of the cluster; run `qimgd cluster secure-etcd --out DIR` where the CA key is",
                ),
                Err(e) => crate::log(&format!("etcd's access control could not be probed: {e}")),
            }
            store
        }
    };
    // Wake-ups on changes, for as long as this task runs; the loops poll anyway,
    // so a broken watch only slows them.
    let watch = async {
        loop {
            if let Err(e) = store.watch_changes(&app.changes, &app.vacancy).await {
                crate::log(&format!("watching the cluster's state: {e}; again in 1 s"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    // One lease for this node, kept by one keeper; its registration under it.
    let kept = c.session.keep(&store, crate::log);
    let a = app.clone();
    // What the node runs changes only with a job or a boot: read again then (it
    // opens the disk and the ESP), or after INFO_MAX_AGE (another process).
    let cached: std::sync::Mutex<Option<CachedInfo>> = std::sync::Mutex::new(None);
    let registered = qcluster::store::stay_registered(
        store.clone(),
        c.session.clone(),
        move || {
            let key = (
                a.jobs.ends.load(Ordering::SeqCst),
                a.up_since_ms.load(Ordering::SeqCst),
            );
            let mut cache = cached.lock().unwrap_or_else(|p| p.into_inner());
            match &*cache {
                Some((k, at, info)) if *k == key && at.elapsed() < INFO_MAX_AGE => info.clone(),
                _ => {
                    let info = node_info(&a, &a.cluster);
                    *cache = Some((key, Instant::now(), info.clone()));
                    info
                }
            }
        },
        Some(app.jobs.ended_count.subscribe()),
        crate::log,
    );
    tokio::join!(watch, kept, registered);
}

/// Tells systemd the agent is ready (`Type=notify`), when it runs under it.
fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let sock = std::os::unix::net::UnixDatagram::unbound();
        if let Ok(s) = sock {
            let p = path.to_string_lossy();
            let r = if let Some(abstract_name) = p.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                    .and_then(|a| s.send_to_addr(b"READY=1", &a))
            } else {
                s.send_to(b"READY=1", &*p)
            };
            if let Err(e) = r {
                crate::log(&format!("telling systemd we are ready failed: {e}"));
            }
        }
    }
}

/// Serves until `stop` completes; `listening` gets the bound URLs once bound.
/// Then cancels a running prepare and waits (at most [`SHUTDOWN_LIMIT`]) for the
/// engine to bring the node to rest.
pub async fn serve(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
    listening: impl FnOnce(Vec<String>),
) -> Result<(), Error> {
    serve_in(config, None, stop, listening).await
}

/// A node of a cluster whose nodes run in one process over one store
/// (`qcluster::Local`): tests run a cluster in seconds, without etcd, through
/// the same code as a cluster on etcd.
#[derive(Clone)]
pub struct InProcess {
    /// The cluster and which node this is.
    pub membership: qcluster::Membership,
    /// The store every node of the cluster shares.
    pub local: Arc<qcluster::Local>,
}

/// [`serve`], as a node of an in-process cluster when `in_process` says so.
pub async fn serve_in(
    config: Config,
    in_process: Option<InProcess>,
    stop: impl std::future::Future<Output = ()>,
    listening: impl FnOnce(Vec<String>),
) -> Result<(), Error> {
    let (app, tls) = build(&config, in_process.as_ref())?;
    // A machine whose power button is software, powered off for a reboot: this
    // start is its boot.
    crate::power::boot_if_due(&app).await;
    let listeners = Listeners::bind(&config).await?;
    listening(listeners.urls());
    let router = crate::api::router(app.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners.tcp {
        tasks.spawn(crate::server::serve_tls(
            l,
            tls.clone(),
            router.clone(),
            app.clone(),
        ));
    }
    if let Some(u) = listeners.unix {
        tasks.spawn(crate::server::serve_unix(u, router.clone(), app.clone()));
    }
    tasks.spawn(crate::power::run(app.clone()));
    tasks.spawn(join(app.clone()));
    tasks.spawn(crate::member::run(app.clone()));
    tasks.spawn(crate::coordinator::run(app.clone()));
    // A clean stop ends the node's session (and so resigns as coordinator); a
    // (simulated) power-off cannot.
    let clean = tokio::select! {
        _ = stop => {
            crate::log("stopping");
            true
        }
        _ = app.power_off.notified() => {
            crate::log("powered off");
            false
        }
    };
    tasks.abort_all();
    if clean {
        crate::coordinator::resign(&app).await;
    }
    app.cancel.cancel();
    let deadline = Instant::now() + SHUTDOWN_LIMIT;
    while let Some(k) = app.jobs.running() {
        if Instant::now() >= deadline {
            crate::log(&format!(
                "{k} still runs after {SHUTDOWN_LIMIT:?}; leaving it to recovery"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `qimgd serve`: serves until SIGTERM or SIGINT; `listening` gets the bound URLs,
/// then systemd is told the agent is ready.
pub async fn run(config: Config, listening: impl FnOnce(Vec<String>)) -> Result<(), Error> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Io {
            op: "installing a SIGTERM handler",
            path: "/".into(),
            source,
        })?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(config, stop, |urls| {
        listening(urls);
        notify_ready();
    })
    .await
}

/// An agent serving on its own thread and runtime (tests and benchmarks run one
/// in-process); stopped when dropped.
pub struct Background {
    /// The URLs it listens on.
    pub urls: Vec<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

/// How long [`spawn`] waits for the agent to listen.
pub const SPAWN_LIMIT: Duration = Duration::from_secs(30);

/// Starts an agent for `config` on a thread; returns once it listens.
pub fn spawn(config: Config) -> Result<Background, Error> {
    spawn_in(config, None)
}

/// [`spawn`], as a node of an in-process cluster when `in_process` says so.
pub fn spawn_in(config: Config, in_process: Option<InProcess>) -> Result<Background, Error> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                op: "starting the async runtime",
                path: "/".into(),
                source,
            })?;
        rt.block_on(serve_in(
            config,
            in_process,
            async {
                let _ = stop_rx.await;
            },
            move |urls| {
                let _ = url_tx.send(urls);
            },
        ))
    });
    match url_rx.recv_timeout(SPAWN_LIMIT) {
        Ok(urls) => Ok(Background {
            urls,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::Bind {
                addr: "all listen addresses".into(),
                source: std::io::Error::other(format!(
                    "the agent did not listen within {SPAWN_LIMIT:?}"
                )),
            }),
        },
    }
}

impl Background {
    /// The port it listens on at `ip`.
    pub fn port(&self, ip: &str) -> Option<u16> {
        self.urls.iter().find_map(|u| {
            let a: std::net::SocketAddr = u.strip_prefix("https://")?.parse().ok()?;
            (a.ip().to_string() == ip).then_some(a.port())
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
