//! Any bytes as the files `qq` reads back: the upgrade state record, the installed
//! containers, node.toml. Parsing never panics; records round-trip; a status can be
//! made of any record at any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upgrade::container::InstalledContainers;
use upgrade::node::NodeConfig;
use upgrade::state::{Record, status_of};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Record>(data) {
        let bytes = serde_json::to_vec(&r).expect("a record serializes");
        assert_eq!(serde_json::from_slice::<Record>(&bytes).expect("round trip"), r);
        let now = data.len() as u64 * 1_000_003;
        let s = status_of(&r, None, now);
        assert_eq!(s.state, r.state);
        assert_eq!(s.is_blocked, r.blocked_until.is_some_and(|t| t > now));
    }
    if let Ok(i) = serde_json::from_slice::<InstalledContainers>(data) {
        let bytes = serde_json::to_vec(&i).expect("serializes");
        assert_eq!(serde_json::from_slice::<InstalledContainers>(&bytes).expect("round trip"), i);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = toml::from_str::<NodeConfig>(text)
    {
        let again = toml::to_string(&c).expect("a config serializes");
        assert_eq!(toml::from_str::<NodeConfig>(&again).expect("round trip"), c);
    }
});
