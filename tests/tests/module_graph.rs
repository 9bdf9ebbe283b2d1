//! Calls go down, events come up: in every crate of the workspace, no module imports (`crate::…`
//! outside comments and unit tests) one that imports it back, directly or through others. A
//! module is a top-level file of `src/` or a top-level folder (everything under it); names
//! re-exported at the crate root (`crate::PeerError`) count as imports of the module that
//! defines them. A few edges that must never exist are named explicitly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The workspace's crates with a module tree of their own (their `src/`).
const CRATES: &[&str] = &[
    "crates/protocol",
    "crates/crypto",
    "crates/peer",
    "crates/server",
    "crates/mls",
    "crates/chat",
    "crates/bench",
    "src-tauri",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `path` (or `path` itself if it is a file).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            files.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files
}

/// `pub use module::{A, B};` in a crate root → A and B live in `module`.
fn reexports(root: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for stmt in root.split(';') {
        let stmt = stmt.trim_start();
        let Some(rest) = stmt
            .strip_prefix("pub use ")
            .or_else(|| stmt.strip_prefix("pub(crate) use "))
        else {
            continue;
        };
        let Some((module, list)) = rest.split_once("::") else {
            continue;
        };
        for name in list.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// The names a line refers to after each `crate::` (the first segment of each path; a
/// `crate::{a, B, c::D}` group on the same line gives each member's first segment).
fn crate_refs(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => out.extend(
                group
                    .split('}')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap().trim()),
            ),
            None => out.push(
                rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap(),
            ),
        }
    }
    out
}

/// Top-level module → the top-level modules of the same crate its code refers to.
fn graph(krate: &str) -> Graph {
    let src = workspace().join(krate).join("src");
    let roots: Vec<String> = ["lib.rs", "main.rs"]
        .iter()
        .filter_map(|r| std::fs::read_to_string(src.join(r)).ok())
        .collect();
    assert!(!roots.is_empty(), "{krate}: no lib.rs or main.rs");
    let reexported: BTreeMap<String, String> = roots.iter().flat_map(|r| reexports(r)).collect();
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let module = if path.is_dir() {
            name
        } else if let Some(m) = name.strip_suffix(".rs") {
            if m == "lib" || m == "main" {
                continue;
            }
            m.to_owned()
        } else {
            continue;
        };
        modules.insert(module, path);
    }
    let mut graph = Graph::new();
    for (module, path) in &modules {
        let mut deps = BTreeSet::new();
        for file in rust_files(path) {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for line in code.lines() {
                let line = line.split("//").next().unwrap();
                for name in crate_refs(line) {
                    let target = reexported
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| name.to_owned());
                    if modules.contains_key(&target) && &target != module {
                        deps.insert(target);
                    }
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The first import cycle found, if any, as `a -> b -> … -> a`.
fn cycle(graph: &Graph) -> Option<String> {
    fn visit<'a>(
        m: &'a str,
        graph: &'a Graph,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if done.contains(m) {
            return None;
        }
        if let Some(at) = path.iter().position(|p| *p == m) {
            return Some(format!("{} -> {m}", path[at..].join(" -> ")));
        }
        path.push(m);
        for d in &graph[m] {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m);
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for krate in CRATES {
        let graph = graph(krate);
        if let Some(c) = cycle(&graph) {
            panic!("{krate}: import cycle {c}\n{graph:#?}");
        }
    }
}

#[test]
fn the_named_layers_point_down() {
    let peer = graph("crates/peer");
    // Sanity: the parser sees the imports it must.
    assert!(peer["router"].contains("requests"), "{peer:#?}");
    assert!(peer["peer"].contains("connection"), "{peer:#?}");
    assert!(
        !peer["connection"].contains("peer"),
        "the connection never imports the handle"
    );

    let desktop = graph("src-tauri");
    assert!(desktop["messenger"].contains("session"), "{desktop:#?}");
    assert!(
        !desktop["session"].contains("messenger"),
        "the session sends events up; it never calls the messenger"
    );
    let above_storage = [
        "messenger",
        "session",
        "outbox",
        "commands",
        "views",
        "events",
    ];
    for m in above_storage {
        assert!(
            !desktop["storage"].contains(m),
            "storage imports {m}, which sits above it"
        );
    }

    let server = graph("crates/server");
    assert!(server["session"].contains("hub"), "{server:#?}");
    assert!(
        !server["store"].contains("session") && !server["hub"].contains("session"),
        "the store and the hub never import the session"
    );
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut g = Graph::new();
    g.insert("a".into(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".into(), BTreeSet::from(["c".to_owned()]));
    g.insert("c".into(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle(&g).as_deref(), Some("a -> b -> c -> a"));
    g.insert("c".into(), BTreeSet::new());
    assert_eq!(cycle(&g), None);
}
