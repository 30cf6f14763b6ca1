//! Any bytes as the files `qq` reads back: the upgrade state record, the installed
//! containers, node.toml. Parsing never panics; a record either converts into the
//! typed state or is refused naming a field; a typed state round-trips through its
//! record; a status can be made of any state at any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upgrade::container::InstalledContainers;
use upgrade::node::NodeConfig;
use upgrade::store::parse;
use upgrade::wire::Record;
use upgrade::state::status_of;

fuzz_target!(|data: &[u8]| {
    match parse(std::path::Path::new("upgrade.json"), data) {
        Ok(s) => {
            let bytes = serde_json::to_vec(&Record::from(&s)).expect("a record serializes");
            let back = parse(std::path::Path::new("upgrade.json"), &bytes).expect("round trip");
            assert_eq!(back, s);
            let now = data.len() as u64 * 1_000_003;
            let st = status_of(&s, None, now);
            assert_eq!(st.state, s.phase());
            let blocked = s.blocked.as_ref().is_some_and(|b| b.until.is_some_and(|t| t > now));
            assert_eq!(st.is_blocked, blocked);
        }
        Err(upgrade::Error::StateDamaged { field, .. }) => assert!(!field.is_empty()),
        Err(e) => panic!("not a damaged-record error: {e:?}"),
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
