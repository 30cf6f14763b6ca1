//! What this process has seen of the cluster's keys: etcd's watch of the prefix
//! (after one read of it, so nothing is missed between the two), this process's
//! own successful writes, and its reads. Each key keeps the value of its highest
//! modification revision, so a late event never undoes a newer write.
//!
//! The member and coordinator loops read it when the watch woke them (the value
//! that woke them is here already, with no round trip to etcd); on their timed
//! polls they read etcd itself, which bounds how stale the mirror can get if a
//! watch stalls without failing (a member cut off from its leader).

use std::collections::BTreeMap;

/// The keys seen, with their revisions.
#[derive(Debug, Default)]
pub struct Mirror {
    /// True while a watch feeds it from a complete read of the prefix.
    live: bool,
    /// Key → (value, modification revision).
    kvs: BTreeMap<String, (Vec<u8>, i64)>,
    /// Key → the revision it was deleted at (a write older than that is stale).
    gone: BTreeMap<String, i64>,
}

impl Mirror {
    /// Starts over from a complete read of the prefix (`kvs`: key, value,
    /// modification revision); live from now on.
    pub fn reset(&mut self, kvs: impl IntoIterator<Item = (String, Vec<u8>, i64)>) {
        self.kvs = kvs.into_iter().map(|(k, v, r)| (k, (v, r))).collect();
        self.gone.clear();
        self.live = true;
    }

    /// The watch ended: nothing here is trusted until the next [`Mirror::reset`].
    pub fn lost(&mut self) {
        self.live = false;
    }

    /// Whether a watch keeps it current.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// `key` held `value` at `revision` (kept unless something newer was seen).
    pub fn saw(&mut self, key: &str, value: &[u8], revision: i64) {
        if self.gone.get(key).is_some_and(|&g| g >= revision) {
            return;
        }
        match self.kvs.get(key) {
            Some((_, r)) if *r >= revision => {}
            _ => {
                self.kvs.insert(key.to_owned(), (value.to_vec(), revision));
            }
        }
    }

    /// `key` was deleted at `revision`.
    pub fn deleted(&mut self, key: &str, revision: i64) {
        if self.kvs.get(key).is_some_and(|(_, r)| *r < revision) {
            self.kvs.remove(key);
        }
        let g = self.gone.entry(key.to_owned()).or_insert(revision);
        *g = (*g).max(revision);
    }

    /// `key`'s value and revision, if it exists.
    pub fn get(&self, key: &str) -> Option<(&[u8], i64)> {
        self.kvs.get(key).map(|(v, r)| (v.as_slice(), *r))
    }

    /// Every key under `prefix`, in key order.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.kvs
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.as_str(), v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_revision_wins_whatever_the_order() {
        let mut m = Mirror::default();
        assert!(!m.is_live());
        m.reset([("p/plan".to_string(), b"a".to_vec(), 5)]);
        assert!(m.is_live());
        // Our own write (revision 9) lands before the watch's older event (7).
        m.saw("p/plan", b"c", 9);
        m.saw("p/plan", b"b", 7);
        assert_eq!(m.get("p/plan"), Some((&b"c"[..], 9)));
        // A delete at 10 wins over a late write seen at 8, not over one at 11.
        m.deleted("p/plan", 10);
        m.saw("p/plan", b"late", 8);
        assert_eq!(m.get("p/plan"), None);
        m.saw("p/plan", b"new", 11);
        assert_eq!(m.get("p/plan"), Some((&b"new"[..], 11)));
        // A delete older than the value seen leaves it.
        m.deleted("p/plan", 10);
        assert_eq!(m.get("p/plan"), Some((&b"new"[..], 11)));
        m.lost();
        assert!(!m.is_live());
    }

    #[test]
    fn under_lists_one_prefix_in_key_order() {
        let mut m = Mirror::default();
        m.reset([
            ("p/reports/00000002".to_string(), b"2".to_vec(), 3),
            ("p/reports/00000001".to_string(), b"1".to_vec(), 2),
            ("p/plan".to_string(), b"x".to_vec(), 1),
            ("p/reportsX".to_string(), b"no".to_vec(), 4),
        ]);
        let keys: Vec<&str> = m.under("p/reports/").map(|(k, _)| k).collect();
        assert_eq!(keys, ["p/reports/00000001", "p/reports/00000002"]);
    }
}
