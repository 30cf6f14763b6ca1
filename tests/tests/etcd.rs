//! The cluster's etcd on this machine: three real members with mutual TLS from a
//! cluster CA made by `qcluster::create`; only holders of a certificate from that
//! CA may read or write; node registrations live exactly as long as their lease.
//! The store's contract (compare-and-swap, the election, the mirror and its
//! watch, the session's lease) is checked over real etcd and, the same checks,
//! over a node alone's store (`qcluster::Local`): one code path for both.

use std::time::{Duration, Instant};

use qcluster::store::Local;
use qcluster::{ClusterPlan, NodeInfo, NodeReport, NodeStep, PlanMode, PlanPhase, Store};
use tests::etcd::{EtcdCluster, spec};

fn info(id: u32) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("node{id}"),
        uuid: format!("uuid-{id}"),
        address: format!("127.0.0.1:{}", 18000 + id),
        model: "demo-node-1".into(),
        installed: Some("7.0.0".parse().unwrap()),
        slot: Some("a".into()),
        health: "online".into(),
    }
}

#[test]
fn mutual_tls_and_leased_registrations() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("t1", 3, 1);
    let Some(c) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    // A certificate from the cluster CA reads and writes (its node's keys).
    let o = c.etcdctl(&c.nodes[2], &["put", "/qimg/t1/reports/00000003", "x"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Another cluster's certificate (another CA) can neither read nor write.
    let other = qcluster::create(&spec("other", 1, 0), &d.path().join("other")).unwrap();
    let m = c.nodes[0].load().unwrap();
    let o = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", m.spec.endpoints().join(",")))
        .arg(format!("--cacert={}", c.nodes[0].ca().display()))
        .arg(format!("--cert={}", other[0].cert().display()))
        .arg(format!("--key={}", other[0].key().display()))
        .args([
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "/qimg/t1/reports/00000003",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a foreign certificate read the state");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad certificate")
            || err.contains("deadline exceeded")
            || err.contains("unknown authority"),
        "{err}"
    );
    // No certificate at all: refused too.
    let o = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", m.spec.endpoints().join(",")))
        .arg(format!("--cacert={}", c.nodes[0].ca().display()))
        .args([
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "/qimg/t1/reports/00000003",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "no certificate read the state");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s1 = c.store(0).await;
        let s2 = c.store(1).await;
        let s3 = c.store(2).await;
        let lease1 = s1.lease(2).await.unwrap();
        s1.put_info(&info(1), lease1).await.unwrap();
        let lease2 = s2.lease(2).await.unwrap();
        s2.put_info(&info(2), lease2).await.unwrap();
        assert_ne!(lease1, lease2);
        assert_eq!(s3.nodes().await.unwrap(), vec![info(1), info(2)]);
        // Node 2 renews, node 1 does not: node 1 is gone after its TTL.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(s2.renew(lease2).await.unwrap(), "node 2's lease is alive");
            let ids: Vec<u32> = s3.nodes().await.unwrap().iter().map(|n| n.id).collect();
            if ids == vec![2] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 1's registration outlived its lease: {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            !s1.renew(lease1).await.unwrap(),
            "an expired lease cannot be renewed"
        );
    });
}

#[test]
fn plan_compare_and_swap_and_one_coordinator() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("t3", 3, 1);
    // One connection acts as every node: etcd's access control off.
    let Some(c) = EtcdCluster::start_open(d.path(), &s) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let st = c.store(0).await;
        assert!(!st.confined().await.unwrap(), "authentication is off here");
        plan_cas_and_election(&st).await
    });
}

/// Compare-and-swap of the plan and the reports, and one coordinator at a time.
async fn plan_cas_and_election(st: &Store) {
    {
        let plan = |generation, phase| ClusterPlan {
            rolling: true,
            nodes_per_batch: Some(1),
            phase,
            ..ClusterPlan::new(
                generation,
                "/x.qimg",
                "7.1.0".parse().unwrap(),
                PlanMode::Platform,
            )
        };
        assert!(st.plan().await.unwrap().is_none());
        assert!(
            st.put_plan_if(&plan(1, PlanPhase::Preparing), None)
                .await
                .unwrap()
        );
        assert!(
            !st.put_plan_if(&plan(1, PlanPhase::Preparing), None)
                .await
                .unwrap(),
            "a second first plan loses"
        );
        let (p, rev) = st.plan().await.unwrap().unwrap();
        assert_eq!(p, plan(1, PlanPhase::Preparing));
        assert!(
            st.put_plan_if(&plan(1, PlanPhase::Prepared), Some(rev))
                .await
                .unwrap()
        );
        assert!(
            !st.put_plan_if(&plan(1, PlanPhase::Failed), Some(rev))
                .await
                .unwrap(),
            "a write from a stale read loses"
        );
        assert_eq!(
            st.plan().await.unwrap().unwrap().0.phase,
            PlanPhase::Prepared
        );

        let r = |step| NodeReport {
            generation: 1,
            step,
            progress: 100,
            error: None,
            downtime_ms: None,
            at_ms: 0,
        };
        st.report(2, &r(NodeStep::Prepared)).await.unwrap();
        st.report(1, &r(NodeStep::Failed)).await.unwrap();
        assert_eq!(
            st.reports().await.unwrap(),
            vec![(1, r(NodeStep::Failed)), (2, r(NodeStep::Prepared))]
        );
        // A progress report read before another write loses to it.
        let (mine, rev) = st.report_of(2).await.unwrap().unwrap();
        assert_eq!(mine, r(NodeStep::Prepared));
        assert!(st.report_of(3).await.unwrap().is_none());
        st.report(2, &r(NodeStep::Committed)).await.unwrap();
        assert!(
            !st.report_if(2, &r(NodeStep::Preparing), rev).await.unwrap(),
            "a report from a stale read loses"
        );
        let (now, rev) = st.report_of(2).await.unwrap().unwrap();
        assert_eq!(now.step, NodeStep::Committed);
        assert!(
            st.report_if(2, &r(NodeStep::RolledBack), rev)
                .await
                .unwrap()
        );

        // One coordinator: the key goes with its holder's lease.
        let l1 = st.lease(30).await.unwrap();
        let l2 = st.lease(30).await.unwrap();
        assert!(st.try_lead(1, l1).await.unwrap());
        assert!(
            st.try_lead(1, l1).await.unwrap(),
            "the holder still holds it"
        );
        assert!(!st.try_lead(2, l2).await.unwrap());
        assert_eq!(st.coordinator().await.unwrap(), Some(1));
        st.revoke(l1).await.unwrap();
        assert!(
            st.try_lead(2, l2).await.unwrap(),
            "after the holder's lease is gone"
        );
        assert_eq!(st.coordinator().await.unwrap(), Some(2));
        let l3 = st.lease(30).await.unwrap();
        assert!(
            !st.try_lead(2, l3).await.unwrap(),
            "the node's key under another lease (an earlier run's) is not a lead"
        );
        // Resigning deletes only the holder's own key under its own lease.
        assert!(!st.resign(1, l2).await.unwrap(), "not node 1's key");
        assert!(!st.resign(2, l3).await.unwrap(), "not under that lease");
        assert_eq!(st.coordinator().await.unwrap(), Some(2));
        assert!(st.resign(2, l2).await.unwrap());
        assert_eq!(st.coordinator().await.unwrap(), None, "the key went");
        assert!(
            st.try_lead(1, l1).await.is_err(),
            "a revoked lease leads nothing"
        );
        assert!(st.try_lead(3, l3).await.unwrap(), "free for the next");
    }
}

/// Waits for a tick of `rx`, naming what it waited for.
async fn tick(rx: &mut tokio::sync::watch::Receiver<u64>, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no tick within 10 s: {what}"))
        .unwrap();
}

#[test]
fn the_mirror_follows_other_nodes_writes_and_says_when_the_coordinator_goes() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("t4", 3, 1);
    // Node 2's connection writes node 3's report: etcd's access control off.
    let Some(c) = EtcdCluster::start_open(d.path(), &s) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { mirror_and_watch(c.store(0).await, c.store(1).await).await });
}

/// `a` mirrors what `b` (another process) writes, through the watch.
async fn mirror_and_watch(a: Store, b: Store) {
    {
        let plan = |phase| ClusterPlan {
            phase,
            ..ClusterPlan::new(3, "/x.qimg", "7.1.0".parse().unwrap(), PlanMode::Platform)
        };
        let r = |step| NodeReport {
            generation: 3,
            step,
            progress: 100,
            error: None,
            downtime_ms: None,
            at_ms: 1234,
        };
        // Before any watch: read from etcd.
        assert!(
            b.put_plan_if(&plan(PlanPhase::Preparing), None)
                .await
                .unwrap()
        );
        assert_eq!(
            a.plan_seen().await.unwrap().unwrap().0.phase,
            PlanPhase::Preparing
        );

        let (changes, vacancy) = (
            tokio::sync::watch::Sender::new(0u64),
            tokio::sync::watch::Sender::new(0u64),
        );
        let (mut ch, mut va) = (changes.subscribe(), vacancy.subscribe());
        let watcher = a.clone();
        let watch = tokio::spawn(async move { watcher.watch_changes(&changes, &vacancy).await });
        tick(&mut ch, "the mirror's first read").await;

        // Another node's writes: in the mirror by the time the tick arrives.
        let (_, rev) = b.plan().await.unwrap().unwrap();
        assert!(
            b.put_plan_if(&plan(PlanPhase::Prepared), Some(rev))
                .await
                .unwrap()
        );
        tick(&mut ch, "the plan written by node 2").await;
        let (seen, seen_rev) = a.plan_seen().await.unwrap().unwrap();
        assert_eq!(seen.phase, PlanPhase::Prepared);
        assert_eq!(
            seen_rev,
            a.plan().await.unwrap().unwrap().1,
            "the same revision as etcd's"
        );
        b.report(3, &r(NodeStep::Committed)).await.unwrap();
        tick(&mut ch, "node 3's report").await;
        assert_eq!(
            a.reports_seen().await.unwrap(),
            vec![(3, r(NodeStep::Committed))]
        );
        assert_eq!(
            a.report_of_seen(3).await.unwrap().unwrap().0,
            r(NodeStep::Committed)
        );

        // This process's own write is there at once (before its watch event).
        a.report(1, &r(NodeStep::Committing)).await.unwrap();
        assert_eq!(
            a.report_of_seen(1).await.unwrap().unwrap().0,
            r(NodeStep::Committing)
        );

        // The coordinator key going (revoked) ticks the vacancy, not the changes.
        let l = b.lease(30).await.unwrap();
        assert!(b.try_lead(2, l).await.unwrap());
        b.revoke(l).await.unwrap();
        tick(&mut va, "the coordinator key revoked").await;

        // Another node's registration, and its going with its lease: in the
        // mirror as the watch delivers them (bounded waits: no tick for these).
        let l = b.lease(30).await.unwrap();
        b.put_info(&info(2), l).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.nodes_seen().await.unwrap() != vec![info(2)] {
            assert!(
                Instant::now() < deadline,
                "node 2's registration not seen in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b.revoke(l).await.unwrap();
        while !a.nodes_seen().await.unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "node 2's registration still seen after its lease went"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Once the watch is gone, reads go to etcd again: a write by another
        // node is read at once, without a tick.
        watch.abort();
        let _ = watch.await;
        let (_, rev) = b.plan().await.unwrap().unwrap();
        assert!(
            b.put_plan_if(&plan(PlanPhase::Committing), Some(rev))
                .await
                .unwrap()
        );
        assert_eq!(
            a.plan_seen().await.unwrap().unwrap().0.phase,
            PlanPhase::Committing
        );
    }
}

#[test]
fn one_session_per_node_holds_its_keys_and_takes_them_along() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("t5", 1, 0);
    let Some(c) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { session_holds_keys(c.store(0).await).await });
}

/// One session's lease holds the node's keys, renewed, replaced, closed.
async fn session_holds_keys(st: Store) {
    {
        let session = qcluster::Session::new(Duration::from_secs(2));
        let mut changed = session.subscribe();
        let (k, sess) = (st.clone(), session.clone());
        let keeper = tokio::spawn(async move { sess.keep(&k, |_| {}).await });
        let (r, sess) = (st.clone(), session.clone());
        let registry = tokio::spawn(qcluster::store::stay_registered(
            r,
            sess,
            || info(1),
            None,
            |_| {},
        ));
        // Waits until `cond` holds, naming it.
        async fn until<F: std::future::Future<Output = bool>>(what: &str, cond: impl Fn() -> F) {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !cond().await {
                assert!(Instant::now() < deadline, "not within 15 s: {what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .expect("a lease granted within 10 s")
            .unwrap();
        let first = session.lease().expect("granted");
        until("registered under the session's lease", || async {
            st.nodes().await.unwrap() == vec![info(1)]
        })
        .await;
        assert!(st.try_lead(1, first).await.unwrap());
        // Kept alive past several TTLs by the one keeper.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(session.lease(), Some(first), "the same lease, renewed");
        assert_eq!(st.nodes().await.unwrap(), vec![info(1)]);
        assert_eq!(st.coordinator().await.unwrap(), Some(1));

        // Lost (revoked behind the keeper's back, as if etcd had been away past
        // the TTL): everything under it went; a new lease, and the registration
        // is put back under it.
        st.revoke(first).await.unwrap();
        assert_eq!(st.coordinator().await.unwrap(), None);
        until("a new lease", || async {
            session.lease().is_some_and(|l| l != first)
        })
        .await;
        until("registered again", || async {
            st.nodes().await.unwrap() == vec![info(1)]
        })
        .await;
        let second = session.lease().unwrap();
        assert!(st.try_lead(1, second).await.unwrap());

        // A clean stop closes the session: the registration and the coordinator
        // key go at once, and no new lease is granted.
        assert!(session.close(&st).await.unwrap());
        assert_eq!(st.nodes().await.unwrap(), vec![]);
        assert_eq!(st.coordinator().await.unwrap(), None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(session.lease(), None, "closed stays closed");
        assert_eq!(st.nodes().await.unwrap(), vec![]);
        keeper.abort();
        registry.abort();
    }
}

/// The same contract over a node alone's store: two stores over one
/// `Local` are two processes' connections to one etcd.
#[test]
fn the_same_contract_over_a_node_alones_store() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let prefix = "/qimg/alone/";
        plan_cas_and_election(&Store::local(Local::memory(), prefix)).await;
        let l = Local::memory();
        mirror_and_watch(Store::local(l.clone(), prefix), Store::local(l, prefix)).await;
        session_holds_keys(Store::local(Local::memory(), prefix)).await;
    });
}

#[test]
fn renewed_certificates_chain_to_the_ca_expire_and_serve_at_once() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("rn", 3, 1);
    let Some(c) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    if !tests::tool("openssl") {
        return;
    }
    let out = d.path().join("cluster");
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let openssl = |args: &[&str], cert: &std::path::Path| {
        std::process::Command::new("openssl")
            .args(args)
            .arg(cert)
            .output()
            .unwrap()
    };
    let day = 86_400u64;
    for new_keys in [false, true] {
        let (cert0, key0) = (read(c.nodes[1].cert()), read(c.nodes[1].key()));
        let done = qcluster::reissue(&out, new_keys).unwrap();
        assert_eq!(done.len(), 3);
        assert_ne!(read(c.nodes[1].cert()), cert0, "renewed");
        assert_eq!(
            read(c.nodes[1].key()) != key0,
            new_keys,
            "a new key only when asked"
        );
        for n in &c.nodes {
            let ca = format!("{}", n.ca().display());
            let o = openssl(&["verify", "-CAfile", &ca], &n.cert());
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            // Valid for 397 days: past 396 days yes, past 398 no.
            for (days, valid) in [(396, true), (398, false)] {
                let secs = (days * day).to_string();
                let o = openssl(&["x509", "-noout", "-checkend", &secs, "-in"], &n.cert());
                assert_eq!(o.status.success(), valid, "{days} days");
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((done[0].expires - now - 397 * day as i64).abs() < 120);
        // The running members (not restarted) accept the renewed identities.
        for i in 0..3 {
            let own = format!("/qimg/rn/reports/{:08}", i + 1);
            let o = c.etcdctl(&c.nodes[i], &["put", &own, "x"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { assert!(c.store(2).await.nodes().await.is_ok()) });
    }
    // Without the CA's key nothing is renewed, and nothing is written.
    std::fs::remove_file(out.join("ca/ca.key")).unwrap();
    let cert = read(c.nodes[0].cert());
    let e = qcluster::reissue(&out, true).unwrap_err();
    assert!(e.to_string().contains("ca.key"), "{e}");
    assert_eq!(read(c.nodes[0].cert()), cert);
}

#[test]
fn a_stolen_node_key_cannot_write_another_nodes_keys() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("ak", 3, 1);
    let Some(c) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    let denied = |r: Result<(), qcluster::Error>, what: &str| {
        let e = r.expect_err(what);
        assert!(
            qutil::chain(&e).contains("permission denied"),
            "{what}: {}",
            qutil::chain(&e)
        );
    };
    let report = |id: u64| NodeReport {
        generation: id,
        step: NodeStep::Committed,
        progress: 100,
        error: None,
        downtime_ms: None,
        at_ms: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Node 2's identity, as whoever holds its node.key.
        let thief = c.store(1).await;
        assert!(thief.confined().await.unwrap(), "authentication is on");
        thief.report(2, &report(2)).await.unwrap();
        let lease = thief.lease(5).await.unwrap();
        thief.put_info(&info(2), lease).await.unwrap();
        // Another node's report ("I am back, go on") and registration: refused
        // by etcd itself.
        denied(thief.report(1, &report(1)).await, "node 1's report");
        denied(
            thief.put_info(&info(3), lease).await,
            "node 3's registration",
        );
        // What every node may write stays writable (the members check it).
        assert!(thief.plan().await.unwrap().is_none());
        // Node 1's own report is still its own, unchanged.
        let s1 = c.store(0).await;
        s1.report(1, &report(1)).await.unwrap();
        assert_eq!(thief.reports().await.unwrap().len(), 2, "both reports read");
    });
    // Outside the cluster's prefix: nothing, not even a read.
    for args in [&["put", "/other", "x"][..], &["get", "/other"][..]] {
        let o = c.etcdctl(&c.nodes[1], args);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("permission denied"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_job_that_ended_is_registered_at_once_not_a_third_of_the_ttl_later() {
    let d = tempfile::tempdir().unwrap();
    let s = spec("t6", 1, 0);
    let Some(c) = EtcdCluster::start(d.path(), &s) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let st = c.store(0).await;
        // A lease of 30 s: the timer alone would look again after 10 s.
        let session = qcluster::Session::new(Duration::from_secs(30));
        let (k, sess) = (st.clone(), session.clone());
        let keeper = tokio::spawn(async move { sess.keep(&k, |_| {}).await });
        let now = std::sync::Arc::new(std::sync::Mutex::new(info(1)));
        let (poke, poked) = tokio::sync::watch::channel(0u64);
        let shown = now.clone();
        let registry = tokio::spawn(qcluster::store::stay_registered(
            st.clone(),
            session.clone(),
            move || shown.lock().unwrap().clone(),
            Some(poked),
            |_| {},
        ));
        let until = |want: NodeInfo, limit: Duration| {
            let st = st.clone();
            async move {
                let deadline = Instant::now() + limit;
                while st.nodes().await.unwrap() != vec![want.clone()] {
                    assert!(
                        Instant::now() < deadline,
                        "not registered within {limit:?}: {want:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        until(info(1), Duration::from_secs(15)).await;
        // The upgrade's job ends: the node runs 7.1.0 from slot b.
        let upgraded = NodeInfo {
            installed: Some("7.1.0".parse().unwrap()),
            slot: Some("b".into()),
            ..info(1)
        };
        *now.lock().unwrap() = upgraded.clone();
        poke.send_replace(1);
        until(upgraded, Duration::from_secs(3)).await;
        registry.abort();
        keeper.abort();
    });
}
