//! Repository rules a machine can check (rust-analyzer's tidy test), run with every
//! `cargo xtask ci`. docs/style.md says why each rule exists.
//!
//! - ARCHITECTURE.md names every source module, and every path it names exists.
//! - Docs and messages name only `cargo xtask` subcommands that exist, and only
//!   repository files that exist.
//! - No `#[error(...)]` message formats its source (the cause is printed once, by
//!   whoever walks the chain).
//! - No module cycles inside a crate.
//! - No library `pub fn` returns `Result<_, String>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The workspace's crates (directories with a Cargo.toml and a src/), fuzz aside.
fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("src").is_dir())
        .collect();
    v.sort();
    v
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn architecture_names_every_source_module() {
    let arch = read(&root().join("ARCHITECTURE.md"));
    let mut missing = vec![];
    for c in crates() {
        let src = c.join("src");
        for f in rust_files(&src) {
            let r = f.strip_prefix(&src).unwrap().display().to_string();
            let name = f.file_name().unwrap().to_str().unwrap();
            if matches!(name, "lib.rs" | "main.rs" | "mod.rs" | "tests.rs") {
                continue;
            }
            // A module is named by its path under src/, or by its directory's.
            let dir_named = Path::new(&r)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .is_some_and(|d| arch.contains(&format!("{}/", d.display())));
            if !arch.contains(&r) && !dir_named {
                missing.push(rel(&f));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules: {missing:#?}"
    );
}

/// Markdown files whose paths and commands are checked.
fn docs() -> Vec<PathBuf> {
    let mut v = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for d in ["docs", "fuzz"] {
        if let Ok(rd) = std::fs::read_dir(root().join(d)) {
            v.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "md")),
            );
        }
    }
    v.sort();
    v
}

/// Code spans of a markdown text.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Paths under the repository the text names: a code span that starts with a
/// top-level directory of the repository and ends in a file name with an extension.
#[test]
fn docs_name_only_files_that_exist() {
    let tops: BTreeSet<String> = std::fs::read_dir(root())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    let mut bad = vec![];
    for d in docs() {
        let text = read(&d);
        for s in spans(&text) {
            let s = s.trim();
            let Some(top) = s.split('/').next() else {
                continue;
            };
            let looks_like_path = tops.contains(top)
                && s.contains('/')
                && !s.contains(' ')
                && !s.contains('*')
                && !s.contains('<')
                && s.rsplit('/').next().is_some_and(|f| f.contains('.'));
            if looks_like_path && !root().join(s).exists() {
                bad.push(format!("{}: {s}", rel(&d)));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "docs name files that do not exist: {bad:#?}"
    );
}

/// The longest a source file may be: past it, a file holds more than one concept
/// (docs/style.md: split by concept).
const MAX_LINES: usize = 800;

#[test]
fn no_source_file_passes_800_lines() {
    let mut long = vec![];
    for c in crates().into_iter().chain([root().join("fuzz")]) {
        for dir in ["src", "tests", "fuzz_targets"] {
            for f in rust_files(&c.join(dir)) {
                let n = read(&f).lines().count();
                if n > MAX_LINES {
                    long.push(format!("{}: {n} lines", rel(&f)));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by concept): {long:#?}"
    );
}

/// The agent reaches simulated hardware only through the engine's `Machine`
/// (its `power()` button) and the data-safety `Source`: a simulator named in the
/// production path is a silent default waiting to happen (a real node once gated
/// its rolling reboots on the simulated restriper's timer).
#[test]
fn the_agent_never_names_the_simulator() {
    let mut named = vec![];
    for f in rust_files(&root().join("qimgd/src")) {
        for (i, line) in read(&f).lines().enumerate() {
            if line.contains("upgrade::sim") || line.contains("sim::") {
                named.push(format!("{}:{}: {}", rel(&f), i + 1, line.trim()));
            }
        }
    }
    assert!(
        named.is_empty(),
        "qimgd names the simulator (go through Machine::power or the [sim] settings): {named:#?}"
    );
}

/// Words that say where the project stands, which rot as soon as it moves on.
const STATUS_PROSE: &[&str] = &[
    "for now",
    "is the next step",
    "the next step is",
    "not yet",
    "in progress (issue",
];

/// Where the project stands is said in one place, ARCHITECTURE.md's status table;
/// prose elsewhere that says what is not done yet goes stale unnoticed (docs/qimgd.md
/// said "the cluster-wide upgrade is the next step" long after it landed).
#[test]
fn docs_say_where_the_project_stands_only_in_the_status_table() {
    let mut bad = vec![];
    for f in docs() {
        let text = read(&f);
        for (i, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            for p in STATUS_PROSE {
                if lower.contains(p) {
                    bad.push(format!("{}:{}: {p:?}: {}", rel(&f), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "status prose outside ARCHITECTURE.md's status table (say what is, or name a deliberate gap): {bad:#?}"
    );
}

/// `cargo xtask` subcommands, from xtask's dispatch.
fn xtask_commands() -> BTreeSet<String> {
    let main = read(&root().join("xtask/src/main.rs"));
    main.split("Some(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn docs_and_messages_name_only_xtask_commands_that_exist() {
    let known = xtask_commands();
    assert!(known.contains("ci"), "{known:?}");
    let mut files = docs();
    for c in crates() {
        files.extend(rust_files(&c.join("src")));
        files.extend(rust_files(&c.join("tests")));
    }
    let mut bad = vec![];
    for f in files {
        let text = read(&f);
        for (i, _) in text.match_indices("cargo xtask ") {
            let sub: String = text[i + "cargo xtask ".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !sub.is_empty() && !known.contains(&sub) {
                bad.push(format!("{}: cargo xtask {sub}", rel(&f)));
            }
        }
    }
    assert!(bad.is_empty(), "unknown xtask commands named: {bad:#?}");
}

/// `#[error("…")]` attributes with the variant that follows each.
fn error_variants(text: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let parts: Vec<&str> = text.split("#[error(").collect();
    for w in parts.iter().skip(1) {
        let (attr, rest) = match w.find(")]") {
            Some(i) => (&w[..i], &w[i + 2..]),
            None => continue,
        };
        // The variant: up to the next variant's attributes or the enum's end.
        let end = ["#[error(", "\n}\n", "\n    ///"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .unwrap_or(rest.len());
        out.push((attr.to_owned(), rest[..end].to_owned()));
    }
    out
}

#[test]
fn no_error_message_formats_its_source() {
    let mut bad = vec![];
    for c in crates() {
        for f in rust_files(&c.join("src")) {
            for (attr, body) in error_variants(&read(&f)) {
                if attr.trim() == "transparent" {
                    continue;
                }
                let has_source = body.contains("#[source]")
                    || body.contains("#[from]")
                    || body.contains("source:");
                let tuple_source = body.trim_start().starts_with('(')
                    && (body.contains("(#[source]") || body.contains("(#[from]"));
                let formats = attr.contains("{source")
                    || attr.contains(".source")
                    || (tuple_source && attr.contains("{0"));
                if has_source && formats {
                    bad.push(format!("{}: #[error({attr})]", rel(&f)));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "error messages that repeat their #[source]: {bad:#?}"
    );
}

/// The top-level modules of a crate's library and the ones each uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let lib = src.join("lib.rs");
    let main = src.join("main.rs");
    let roots = [lib, main];
    let is_module = |name: &str| {
        src.join(format!("{name}.rs")).is_file() || src.join(name).join("mod.rs").is_file()
    };
    for f in rust_files(src) {
        // Roots, binaries and test-only files (`x/tests.rs`) are not library modules.
        if roots.contains(&f)
            || f.starts_with(src.join("bin"))
            || f.file_name().is_some_and(|n| n == "tests.rs")
        {
            continue;
        }
        let r = f.strip_prefix(src).unwrap();
        let top = r
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = read(&f);
        // Only code: not comments (doc links name modules freely), not
        // `#[cfg(test)]` modules (tests may use anything).
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let code = code.as_str();
        let uses = g.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != top && is_module(&name) {
                uses.insert(name);
            }
        }
        // `use crate::{a, b::c}`: the names inside braces.
        for (i, _) in code.match_indices("use crate::{") {
            let inner: String = code[i + 12..].chars().take_while(|c| *c != ';').collect();
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top && is_module(&name) {
                    uses.insert(name);
                }
            }
        }
    }
    g
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut vec![], &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_cycles() {
    let mut bad = vec![];
    for c in crates() {
        let g = module_graph(&c.join("src"));
        if let Some(cycle) = find_cycle(&g) {
            bad.push(format!("{}: {}", rel(&c), cycle.join(" → ")));
        }
    }
    assert!(bad.is_empty(), "module cycles: {bad:#?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        find_cycle(&g).unwrap(),
        vec!["a".to_string(), "b".into(), "c".into(), "a".into()]
    );
    let acyclic: BTreeMap<String, BTreeSet<String>> =
        [("a".to_string(), BTreeSet::from(["b".to_string()]))]
            .into_iter()
            .collect();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn no_library_pub_fn_returns_a_string_error() {
    let mut bad = vec![];
    // Libraries only: a crate with a lib.rs, not its binaries' files.
    for c in crates()
        .into_iter()
        .filter(|c| c.join("src/lib.rs").is_file())
    {
        let src = c.join("src");
        for f in rust_files(&src) {
            if f == src.join("main.rs") || f.starts_with(src.join("bin")) {
                continue;
            }
            let text = read(&f);
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for sig in code.split("pub fn ").skip(1) {
                let head: String = sig.chars().take_while(|c| *c != '{' && *c != ';').collect();
                let ret = head.rsplit("->").next().unwrap_or("");
                if head.contains("->") && ret.replace(' ', "").contains(",String>") {
                    let name: String = head
                        .chars()
                        .take_while(|c| *c != '(' && *c != '<')
                        .collect();
                    bad.push(format!("{}: pub fn {name}", rel(&f)));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "library functions returning Result<_, String>: {bad:#?}"
    );
}

/// The fuzz workspace checks against what clippy checked (`cargo xtask ci`):
/// the same dev profile and, for every package both lock files hold, the same
/// versions. Otherwise its check compiles dependencies of its own again.
#[test]
fn the_fuzz_workspace_shares_the_profile_and_the_versions() {
    let main = read(&root().join("Cargo.toml"));
    let fuzz = read(&root().join("fuzz/Cargo.toml"));
    let profile = |t: &str| -> Vec<String> {
        t.lines()
            .skip_while(|l| !l.starts_with("[profile."))
            .take_while(|l| !l.starts_with("[workspace") && !l.starts_with("[[bin"))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        !profile(&main).is_empty(),
        "the workspace has a dev profile"
    );
    assert_eq!(
        profile(&main),
        profile(&fuzz),
        "fuzz/Cargo.toml's [profile.*] tables differ from Cargo.toml's"
    );
    let versions = |t: &str| -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut name = None;
        for l in t.lines() {
            if let Some(n) = l.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_owned());
            } else if let (Some(v), Some(n)) = (l.strip_prefix("version = "), name.take()) {
                m.entry(n)
                    .or_default()
                    .insert(v.trim_matches('"').to_owned());
            }
        }
        m
    };
    let (a, b) = (
        versions(&read(&root().join("Cargo.lock"))),
        versions(&read(&root().join("fuzz/Cargo.lock"))),
    );
    assert!(
        a.contains_key("serde") && b.contains_key("serde"),
        "lock files parsed"
    );
    for (n, vs) in &b {
        if let Some(main_vs) = a.get(n) {
            assert!(
                vs.is_subset(main_vs),
                "fuzz/Cargo.lock has {n} {vs:?}, Cargo.lock {main_vs:?}: copy Cargo.lock over fuzz/Cargo.lock and run cargo check there"
            );
        }
    }
}
