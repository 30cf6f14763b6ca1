//! What an answer may say of the node's own layout: nothing. An error's
//! description names the cluster's paths (`/x.qimg` in the upgrade directory),
//! never where the agent keeps its files; the journal keeps the full text
//! (`super::error`, when it answers). The directories to hide are registered
//! when an agent starts ([`hide`]); in one process holding several agents (a
//! test's cluster) each one's are hidden in every answer.

use std::path::Path;
use std::sync::Mutex;

/// A directory and what an answer says instead.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hidden {
    /// The directory as the agent names it (no trailing `/`).
    dir: String,
    /// What replaces it before a `/` and the rest of a path (`""`: the path
    /// below it is what callers know).
    under: String,
    /// What replaces it alone.
    alone: String,
}

static HIDDEN: Mutex<Vec<Hidden>> = Mutex::new(Vec::new());

/// Hides `dir` (as given, and its canonical form) in every answer: a path
/// below it becomes `under` + the rest, the directory itself `alone`.
pub fn hide(dir: &Path, under: &str, alone: &str) {
    let mut h = HIDDEN.lock().unwrap_or_else(|p| p.into_inner());
    let canonical = dir.canonicalize().ok();
    for d in std::iter::once(dir).chain(canonical.as_deref()) {
        let text = d.display().to_string();
        let text = text.trim_end_matches('/');
        // The root, or a relative name, says nothing of the layout.
        if !text.starts_with('/') || text.len() < 2 || h.iter().any(|x| x.dir == text) {
            continue;
        }
        h.push(Hidden {
            dir: text.to_owned(),
            under: under.to_owned(),
            alone: alone.to_owned(),
        });
    }
    // The longest first: a directory inside another is replaced as itself.
    h.sort_by_key(|x| std::cmp::Reverse(x.dir.len()));
}

/// `text` with every hidden directory replaced; `None` when it names none.
pub fn redact(text: &str) -> Option<String> {
    let h = HIDDEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_owned();
    let mut changed = false;
    for x in h.iter() {
        if let Some(r) = replace(&out, x) {
            out = r;
            changed = true;
        }
    }
    changed.then_some(out)
}

/// Each occurrence of `x.dir` that is a whole path component replaced.
fn replace(text: &str, x: &Hidden) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find(&x.dir) {
        let after = &rest[i + x.dir.len()..];
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_path_char(c));
        out.push_str(&rest[..i]);
        match after.chars().next() {
            Some('/') if before_ok => {
                out.push_str(&x.under);
                changed = true;
            }
            next if before_ok && next.is_none_or(|c| !is_path_char(c)) => {
                out.push_str(&x.alone);
                changed = true;
            }
            _ => out.push_str(&x.dir),
        }
        rest = after;
    }
    out.push_str(rest);
    changed.then_some(out)
}

fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '/' | '.' | '-' | '_' | '+' | '~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_directories_become_what_callers_know() {
        let up = Hidden {
            dir: "/srv/qimg-test-up".into(),
            under: String::new(),
            alone: "the upgrade directory".into(),
        };
        let state = Hidden {
            dir: "/srv/qimg-test-up/.state".into(),
            under: "<node state>".into(),
            alone: "<node state>".into(),
        };
        let r = |t: &str, x: &Hidden| replace(t, x);
        assert_eq!(
            r("opening /srv/qimg-test-up/sub/x.qimg: not found", &up).as_deref(),
            Some("opening /sub/x.qimg: not found")
        );
        assert_eq!(
            r("no room in /srv/qimg-test-up (64 MiB kept)", &up).as_deref(),
            Some("no room in the upgrade directory (64 MiB kept)")
        );
        assert_eq!(
            r("writing /srv/qimg-test-up/.state/upgrade.json", &state).as_deref(),
            Some("writing <node state>/upgrade.json")
        );
        // Another directory whose name only starts the same: kept.
        assert_eq!(
            r("/srv/qimg-test-upper/x and /srv/qimg-test-up2", &up),
            None
        );
        assert_eq!(r("a/srv/qimg-test-up/x", &up), None, "inside another path");
        assert_eq!(r("nothing here", &up), None);
        // Registered: both hidden, the one inside the other as itself.
        hide(Path::new("/srv/qimg-test-up"), "", "the upgrade directory");
        hide(
            Path::new("/srv/qimg-test-up/.state/"),
            "<node state>",
            "<node state>",
        );
        assert_eq!(
            redact("/srv/qimg-test-up/.state/a and /srv/qimg-test-up/b.qimg").as_deref(),
            Some("<node state>/a and /b.qimg")
        );
        assert_eq!(redact("/x.qimg is missing"), None);
        hide(Path::new("/"), "", "");
        assert_eq!(redact("/x.qimg"), None, "the root hides nothing");
    }
}
