//! The coordinator's loop: campaign for the key while nobody coordinates (at
//! once when etcd's watch says it went), reconcile while this node holds it,
//! step down before this node reboots for the plan; and the clean stop's
//! resignation.

use std::time::Duration;

use super::reconcile::reconcile;
use super::{CAMPAIGN_POLL, Ctx, POLL};
use crate::api::Shared;
use crate::restriper::Source;

/// Campaigns for coordinator and, while it holds the key, reconciles. Runs until
/// dropped.
pub async fn run(app: Shared) {
    let c = &app.cluster;
    let me = c.membership.node_id;
    let spec = c.membership.spec.clone();
    // The session lease this node holds the coordinator key under, while it
    // does (`None`: it does not coordinate).
    let mut led_under: Option<i64> = None;
    let mut last_error = String::new();
    let mut changes = app.changes.subscribe();
    let mut vacancy = app.vacancy.subscribe();
    // When a data-safety gate's time is up (Unix ms), to wake exactly then.
    let mut gate_until: u64 = 0;
    let mut polls = crate::cluster::Fresh::default();
    let events = crate::events::Events::with_webhook(
        app.config.journal_socket.clone(),
        app.config
            .event_webhook
            .as_deref()
            .map(|u| (u, app.config.event_webhook_ca.clone())),
    );
    loop {
        // The coordinator (and a node stepping down) acts on changes, at the poll
        // at the latest, and exactly when a gate's time is up; the others
        // campaign when the coordinator key goes, or at their slower poll.
        // Only the full poll reads etcd; a change or a gate's end is in the mirror.
        let mut fresh = false;
        // A node that does not coordinate reads the key from the mirror, etcd
        // one poll in FRESH_EVERY.
        let mut fresh_key = false;
        if led_under.is_some() {
            let nap = match gate_until.checked_sub(qcluster::plan::now_ms()) {
                Some(left) if left > 0 => POLL.min(Duration::from_millis(left)),
                _ => POLL,
            };
            fresh = tokio::select! {
                _ = tokio::time::sleep(nap) => nap == POLL,
                _ = changes.changed() => false,
            };
        } else {
            fresh_key = tokio::select! {
                _ = tokio::time::sleep(CAMPAIGN_POLL) => polls.poll(),
                _ = vacancy.changed() => false,
            };
        }
        let (Some(store), Some(lease)) = (c.store(), c.session.lease()) else {
            // No etcd yet, or no session: a lead under a lost lease went with it.
            set_lead(&app, &mut led_under, None);
            continue;
        };
        let r: Result<(), qcluster::Error> = async {
            if app.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
                // This node reboots for the plan: another node finishes it.
                if led_under.is_some() {
                    store.resign(me, lease).await?;
                    crate::log("this node reboots for the upgrade: it steps down as coordinator");
                    set_lead(&app, &mut led_under, None);
                }
                return Ok(());
            }
            // Somebody else coordinates: nothing to campaign for (a read, where a
            // campaign would be a write on every etcd member).
            if led_under.is_none() {
                let holder = if fresh_key {
                    store.coordinator().await?
                } else {
                    store.coordinator_seen().await?
                };
                if holder.is_some_and(|id| id != me) {
                    return Ok(());
                }
            }
            // The key lives under the session's lease, which one keeper renews:
            // while that lease is the one it won under, the lead holds without
            // asking again.
            let now = led_under == Some(lease) || store.try_lead(me, lease).await?;
            set_lead(&app, &mut led_under, now.then_some(lease));
            if now {
                let probe = match &app.safety {
                    Source::Probe(argv) => Some(argv.as_slice()),
                    _ => None,
                };
                let cx = Ctx {
                    now_ms: qcluster::plan::now_ms(),
                    me,
                    batch_limit_ms: app.config.batch_limit_secs * 1000,
                    gate_limit_ms: app.config.data_safety_limit_secs * 1000,
                    data: app.safety.initial(),
                };
                gate_until = reconcile(store, &spec, cx, probe, fresh, &events).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let text = upgrade::chain(&e);
            if text != last_error {
                crate::log(&format!("coordinator: {text}"));
                last_error = text;
            }
        }
    }
}

/// Notes the lead (`Some(lease)`: held under that session lease): a change is
/// logged, and kept in `App::coordinating` for a clean stop.
fn set_lead(app: &Shared, led_under: &mut Option<i64>, now: Option<i64>) {
    if now.is_some() != led_under.is_some() {
        crate::log(if now.is_some() {
            "this node is the cluster's coordinator"
        } else {
            "this node is no longer the coordinator"
        });
        app.coordinating
            .store(now.is_some(), std::sync::atomic::Ordering::SeqCst);
    }
    *led_under = now;
}

/// How long a stopping agent tries to end its session.
pub const RESIGN_LIMIT: Duration = Duration::from_secs(2);

/// On a clean stop: ends this node's session ([`qcluster::Session::close`]):
/// its lease is revoked, so its registration and, if it coordinates, the
/// coordinator key go at once, and another node takes over now (etcd's watch
/// tells them) instead of when the lease would have expired. At most
/// [`RESIGN_LIMIT`].
pub async fn resign(app: &Shared) {
    let c = &app.cluster;
    let Some(store) = c.store() else {
        return;
    };
    let leading = app.coordinating.load(std::sync::atomic::Ordering::SeqCst);
    match tokio::time::timeout(RESIGN_LIMIT, c.session.close(store)).await {
        Ok(Ok(true)) if leading => crate::log("resigned as the cluster's coordinator"),
        Ok(Ok(_)) => crate::log("left the cluster's session"),
        Ok(Err(e)) => crate::log(&format!(
            "ending this node's session: {}; its keys go when the lease expires",
            upgrade::chain(&e)
        )),
        Err(_) => crate::log(&format!(
            "ending this node's session took over {RESIGN_LIMIT:?}; its keys go when the lease expires"
        )),
    }
}
