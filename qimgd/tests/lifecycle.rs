//! The agent's life: SIGTERM during a prepare cancels it and the engine undoes
//! what it wrote before the agent exits; the generated certificate and key are
//! kept private.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bootctl::layout::Slot;
use common::*;
use serde_json::json;

#[test]
fn sigterm_during_a_prepare_undoes_it_before_exiting() {
    let Some(mut a) = Agentd::start_with(Options {
        env: vec![
            ("QIMG_PAUSE_AT".into(), "step:write".into()),
            ("QIMG_PAUSE_SECS".into(), "2".into()),
        ],
        ..Options::default()
    }) else {
        return;
    };
    let key = a.dir.path().join("state/tls/qimgd.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let label_b = a.node.slot_label(Slot::B);
    let slot_a = a.node.slot_bytes(Slot::A);
    let c = a.logged_in();
    let p = a.place(&bundles().platform);
    let (s, r) = c.post("/v2/upgrade/prepare", &json!({"image_path": p}).to_string());
    assert_eq!(s, 202, "{r}");
    let status = a.stop(Duration::from_secs(90));
    assert!(status.success(), "{status:?}\n{}", a.log());
    let log = a.log();
    assert!(log.contains("qimgd: stopping"), "{log}");
    let st = a.node.agent().state().unwrap();
    assert_eq!(st.phase(), upgrade::wire::Phase::Idle, "{st:?}\n{log}");
    assert!(st.details.contains("cancelled"), "{}", st.details);
    assert_eq!(a.node.slot_label(Slot::B), label_b, "slot B is as it was");
    assert_eq!(a.node.slot_bytes(Slot::A), slot_a);
    assert_eq!(a.node.entries(), vec!["qimg-demo-a-7.0.efi".to_string()]);
}
