//! The layer rule of `docs/architecture.md`: a top-level module of the library may use only
//! modules in layers below its own, plus the few sibling edges listed here. A new module must be
//! given a layer before it builds green, and an import that points up fails with its file named.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level library modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["numerics", "fsio", "rng", "dynlib", "dist"],
    &["coder", "model"],
    &["checkpoint"],
    &["m1", "backend"],
    &["tokenize", "data"],
    &["train", "eval", "generate", "compress", "tokenize_jobs"],
    &["experiment", "serve"],
    &["demo", "bench"],
];

/// Edges allowed within one layer, each with its reason.
const SIBLING_EDGES: &[(&str, &str, &str)] = &[
    ("dist", "dynlib", "MPI is a C library opened at run time"),
    (
        "train",
        "eval",
        "training scores its held-out set with eval's loop",
    ),
    (
        "tokenize",
        "data",
        "tokenizing reads the corpus through data's readers",
    ),
    (
        "backend",
        "m1",
        "the CUDA exact path runs M1's batches on the GPU",
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate root and the binary:
/// `main.rs` and its `cli/` files sit above every layer).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main" | "cli")).then_some(name)
}

/// Every `crate::NAME` a file uses outside comments, with the line it is on.
fn crate_uses(text: &str) -> Vec<(String, usize)> {
    let mut uses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                uses.push((name.clone(), n + 1));
            }
            rest = &after[name.len()..];
        }
    }
    uses
}

/// `from -> to` edges between top-level modules, each with one place that makes it.
fn module_graph(src: &Path) -> BTreeMap<(String, String), String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = BTreeMap::new();
    for f in files {
        let Some(from) = module_of(src, &f) else {
            continue;
        };
        let text = fs::read_to_string(&f).unwrap();
        for (to, line) in crate_uses(&text) {
            if to != from && !to.is_empty() {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| format!("{}:{line}", f.display()));
            }
        }
    }
    edges
}

fn violations(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut bad = Vec::new();
    for ((from, to), at) in edges {
        let (Some(lf), Some(lt)) = (layer_of(from), layer_of(to)) else {
            bad.push(format!(
                "{at}: `{from}` -> `{to}`: a module with no layer (add it to LAYERS)"
            ));
            continue;
        };
        let sibling = SIBLING_EDGES.iter().any(|(a, b, _)| a == from && b == to);
        if lt > lf || (lt == lf && !sibling) {
            bad.push(format!(
                "{at}: `{from}` (layer {lf}) uses `{to}` (layer {lt}): imports must point down"
            ));
        }
    }
    bad
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = module_graph(&src);
    let bad = violations(&edges);
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    let missing: Vec<&&str> = declared.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(missing.is_empty(), "modules with no layer: {missing:?}");
}

#[test]
fn the_check_catches_an_upward_import() {
    // A planted violation: `coder` (layer 1) reaching up into `tokenize` (layer 4), and a sibling
    // edge that is not on the list.
    let mut edges = BTreeMap::new();
    edges.insert(("coder".into(), "tokenize".into()), "planted:1".into());
    edges.insert(("eval".into(), "train".into()), "planted:2".into());
    edges.insert(("tokenize".into(), "coder".into()), "planted:3".into());
    let bad = violations(&edges);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].starts_with("planted:1") && bad[1].starts_with("planted:2"));
    assert_eq!(
        crate_uses("use crate::coder::Cdf; // crate::data"),
        [("coder".into(), 1)]
    );
    assert!(crate_uses("use mycrate::data;").is_empty());
}
