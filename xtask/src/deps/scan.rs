//! The programs the project's own code runs by name (`Command::new("…")` with a
//! literal): each must come from the one list or the base system. A unit test
//! checks that against the list on any machine; `cargo xtask fresh-root` checks
//! that each is really on `PATH` in a new root once the list is installed.

use std::collections::BTreeMap;
use std::path::Path;

use super::list;

/// Each program run by a literal name, with where (`file:line`, from the
/// workspace root), in name order.
pub fn programs(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(p);
                }
            } else if name.ends_with(".rs")
                && let Ok(text) = std::fs::read_to_string(&p)
            {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                for (i, line) in text.lines().enumerate() {
                    for prog in literal_programs(line) {
                        out.entry(prog)
                            .or_default()
                            .push(format!("{rel}:{}", i + 1));
                    }
                }
            }
        }
    }
    out
}

const MARK: &str = "Command::new(\"";

/// The literal program names a line of code (not a comment) passes to `Command::new`.
fn literal_programs(line: &str) -> Vec<String> {
    let mut out = vec![];
    if line.trim_start().starts_with("//") {
        return out;
    }
    let mut rest = line;
    while let Some(i) = rest.find(MARK) {
        rest = &rest[i + MARK.len()..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// Where a program comes from: the list's package, or the base system.
pub fn source_of(program: &str) -> Option<&'static str> {
    list::package_of_tool(program).or_else(|| {
        list::BASE_PROGRAMS
            .contains(&program)
            .then_some("the base system")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_literal_programs_only() {
        assert_eq!(
            literal_programs(
                r#"let a = Command::new("tar").arg(x); Command::new(p); std::process::Command::new("kill")"#
            ),
            ["tar", "kill"]
        );
        assert!(literal_programs("no command here").is_empty());
        assert!(literal_programs(r#"/// Command::new("tar")"#).is_empty());
    }

    #[test]
    fn every_program_the_code_runs_comes_from_the_list_or_the_base_system() {
        let found = programs(&crate::root());
        assert!(
            found.contains_key("minisign"),
            "the scan finds the tests' tools"
        );
        let unlisted: Vec<String> = found
            .iter()
            .filter(|(p, _)| source_of(p).is_none())
            .map(|(p, at)| format!("{p} (run at {})", at.join(", ")))
            .collect();
        assert!(
            unlisted.is_empty(),
            "programs run by the code but in no entry of xtask/src/deps/list.rs nor in its BASE_PROGRAMS: {}",
            unlisted.join("; ")
        );
    }
}
