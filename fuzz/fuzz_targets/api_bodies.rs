//! Any bytes as what crosses the agent's API: the request bodies qimgd parses
//! (login, verify-image, prepare and preview, assess, a peer's assess, a
//! rollback), a
//! bearer token, an `image_path`, an upload's name and query, a peer's
//! `Range`, and an answer as our client reads it. Nothing panics; a body
//! either parses (and then round-trips) or is refused with a 400/413 naming the
//! problem; a token never verifies without the key; a resolved path stays inside
//! the upgrade directory; an accepted upload name is one plain, visible file name.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qapi::assess::AssessRequest;
use qapi::rollback::RollbackRequest;
use qapi::types::{LoginRequest, PrepareRequest, VerifyRequest};
use qimgd::api::assess::PeerAssessRequest;
use qimgd::api::body::parse;

fn check<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    match parse::<T>(data) {
        Ok(v) => {
            let bytes = serde_json::to_vec(&v).expect("serializes");
            assert_eq!(parse::<T>(&bytes).expect("round trip"), v);
        }
        Err(e) => {
            assert!(e.status == 400 || e.status == 413, "{e:?}");
            assert!(!e.description.is_empty());
        }
    }
}

fn upgrade_dir() -> &'static std::path::Path {
    static D: OnceLock<std::path::PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("qimg-fuzz-up-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.qimg"), b"x").unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    check::<LoginRequest>(data);
    check::<VerifyRequest>(data);
    check::<PrepareRequest>(data);
    check::<AssessRequest>(data);
    check::<PeerAssessRequest>(data);
    check::<RollbackRequest>(data);
    let text = String::from_utf8_lossy(data);
    let key = qimgd::token::TokenKey::from_bytes(&[3; 32]);
    assert!(key.check(&text, 0, u64::MAX).is_err() || text.starts_with("qimgd1."));
    if let Ok(p) = qimgd::paths::resolve(upgrade_dir(), &text) {
        assert!(p.file.starts_with(upgrade_dir().canonicalize().unwrap()), "{p:?}");
        assert!(p.shown.starts_with('/'));
    }
    if let Ok(name) = qimgd::images::check_name(&text) {
        assert!(!name.starts_with('.') && !name.contains('/') && !name.is_empty());
        assert!(!name.starts_with(qimgd::images::PARTIAL_PREFIX));
    }
    let _ = qimgd::images::replace_of(Some(&text));
    if let Ok(Some(from)) = qimgd::images::range_from(Some(&text), 1000) {
        assert!(from > 0 && from < 1000, "{from}");
    }
    if let Ok(r) = qapi::client::parse_response(data, "GET") {
        assert!(r.body.len() <= qapi::client::MAX_BODY);
        assert!(r.status <= 999);
    }
});
