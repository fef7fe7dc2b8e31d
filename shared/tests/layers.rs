//! The layers of `custody`, checked from its source: every file under `src/` belongs
//! to a module of one layer (`src/<layer>/<module>.rs` or `src/<layer>/<module>/…`),
//! and
//!
//! - no modules refer to each other in a cycle, of any length;
//! - a kernel module never refers to a domain or edge module;
//! - a domain module never refers to the edge.
//!
//! References are the paths that start with `crate::` (in `use` statements, grouped
//! or not, and inline: `crate::kernel::store::Store`), the crate-root re-exports they
//! may go through (`crate::store`, `crate::TenantId`, read from `lib.rs`), and
//! `super::` paths that leave a module's folder. Comments and string literals are not
//! code and are skipped. No emulator needed: the source is only read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// Lowest first: a module may refer to its own layer and the ones before it.
const LAYERS: [&str; 3] = ["kernel", "domain", "edge"];

#[test]
fn modules_keep_their_layers_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );

    let graph = Graph::of(&files).unwrap_or_else(|e| panic!("{e}"));
    // The scanner must see what is certainly there, or it checks nothing.
    for (from, to) in [
        ("domain::privacy", "kernel::store"),
        ("domain::oauth", "kernel::audit"),
        ("domain::oauth", "domain::schedule"),
        ("edge::api", "kernel::tenant"),
    ] {
        assert!(
            graph.has_edge(from, to),
            "the scan no longer sees {from} → {to}: {graph}"
        );
    }

    let problems = graph.problems();
    assert!(
        problems.is_empty(),
        "the layers of shared/src are broken:\n{}\n\nall references:\n{graph}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------
// The checker's own tests, on small made-up crates: each breaks one rule.
// ---------------------------------------------------------------------------------

const LIB: &str = "pub mod kernel;\npub mod domain;\npub mod edge;\n\
    pub use kernel::{store, tenant};\npub use kernel::tenant::TenantId;\n\
    pub use domain::privacy;\npub use edge::api;\n";

fn made_up(files: &[(&str, &str)]) -> Vec<String> {
    let mut all = vec![
        ("lib.rs".to_owned(), LIB.to_owned()),
        (
            "kernel.rs".to_owned(),
            "pub mod store;\npub mod tenant;".to_owned(),
        ),
        (
            "domain.rs".to_owned(),
            "pub mod privacy;\npub mod oauth;".to_owned(),
        ),
        ("edge.rs".to_owned(), "pub mod api;".to_owned()),
    ];
    for name in [
        "kernel/store.rs",
        "kernel/tenant.rs",
        "domain/privacy.rs",
        "edge/api.rs",
    ] {
        if !files.iter().any(|(path, _)| *path == name) {
            all.push((name.to_owned(), String::new()));
        }
    }
    all.extend(
        files
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned())),
    );
    Graph::of(&all).unwrap_or_else(|e| panic!("{e}")).problems()
}

#[test]
fn a_clean_made_up_crate_passes() {
    let problems = made_up(&[
        (
            "domain/privacy.rs",
            "use crate::kernel::{store::Store, tenant};\n// crate::edge::api in a comment\n\
             const S: &str = \"crate::edge::api in a string\";\nfn f(_: crate::TenantId) {}",
        ),
        (
            "edge/api.rs",
            "use crate::domain::privacy;\nuse crate::store::Store;",
        ),
        ("domain/oauth.rs", "use crate::domain::privacy::X;"),
        (
            "domain/oauth/flow.rs",
            "use super::Y;\nuse super::super::privacy::Z;",
        ),
        (
            "kernel/store.rs",
            "use crate::kernel::tenant::TenantId;\n#[cfg(test)]\nmod tests { use super::*; }",
        ),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_kernel_module_that_uses_the_domain_fails() {
    // An inline path, not a `use`: found all the same.
    let problems = made_up(&[(
        "kernel/store.rs",
        "fn f() -> crate::domain::privacy::Request { todo!() }",
    )]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("kernel::store → domain::privacy"),
        "{problems:?}"
    );
}

#[test]
fn a_kernel_module_that_uses_the_edge_through_a_root_re_export_fails() {
    let problems = made_up(&[(
        "kernel/tenant.rs",
        "use crate::{\n    api::Problem,\n    kernel::store,\n};",
    )]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("kernel::tenant → edge::api")),
        "{problems:?}"
    );
}

#[test]
fn a_domain_module_that_uses_the_edge_fails() {
    let problems = made_up(&[("domain/oauth/flow.rs", "use crate::edge::api::Problem;")]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("domain::oauth → edge::api"),
        "{problems:?}"
    );
}

#[test]
fn a_cycle_of_three_within_a_layer_fails() {
    let problems = made_up(&[
        ("kernel/a.rs", "use crate::kernel::b::B;"),
        ("kernel/b.rs", "use super::c::C;"),
        ("kernel/c.rs", "pub fn f() { crate::kernel::a::g() }"),
    ]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("cycle:"), "{problems:?}");
    for module in ["kernel::a", "kernel::b", "kernel::c"] {
        assert!(problems[0].contains(module), "{problems:?}");
    }
}

#[test]
fn a_file_outside_the_layers_or_an_unknown_path_is_refused() {
    let files = |extra: (&str, &str)| {
        vec![
            ("lib.rs".to_owned(), LIB.to_owned()),
            ("kernel/store.rs".to_owned(), String::new()),
            (extra.0.to_owned(), extra.1.to_owned()),
        ]
    };
    let err = Graph::of(&files(("flat.rs", ""))).unwrap_err();
    assert!(err.contains("flat.rs"), "{err}");
    let err = Graph::of(&files(("kernel/x.rs", "use crate::kernel;"))).unwrap_err();
    assert!(err.contains("crate::kernel"), "{err}");
    let err = Graph::of(&files(("kernel/x.rs", "use crate::nowhere::X;"))).unwrap_err();
    assert!(err.contains("crate::nowhere"), "{err}");
}

// ---------------------------------------------------------------------------------
// Reading the tree
// ---------------------------------------------------------------------------------

/// Every `.rs` file under `dir`, as (path relative to `src` with `/`, text).
fn read_tree(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            read_tree(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(src).expect("under src");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

/// `kernel/store.rs` → `[kernel, store]`; `domain/oauth/flow.rs` →
/// `[domain, oauth, flow]`; `x/mod.rs` → `[x]`; `lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

// ---------------------------------------------------------------------------------
// Tokens: identifiers and punctuation of the code, without comments and literals
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Dollar,
    Other,
}

/// The tokens of `text` that matter for paths, each with its line number. Skips
/// line, doc and (nested) block comments, string, raw string, byte and char
/// literals; lifetimes are identifiers' neighbours and harmless.
fn tokens(text: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' || ((c == 'b' || c == 'c') && at(i + 1) == '"') {
            i += if c == '"' { 1 } else { 2 };
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if at(i) == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if (c == 'r' || ((c == 'b' || c == 'c') && at(i + 1) == 'r'))
            && matches!(at(i + usize::from(c != 'r') + 1), '"' | '#')
            && !at(i.wrapping_sub(1)).is_alphanumeric()
        {
            // Raw string: r"…", r#"…"#, br##"…"##.
            let mut j = i + usize::from(c != 'r') + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                // `r#ident` (a raw identifier): an identifier.
                i = j;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '\n' {
                    line += 1;
                }
                if chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += hashes + 1;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                // Past the backslash and the escaped character (which may be a quote).
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), line));
        } else if c == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            let tok = match c {
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                '*' => Tok::Star,
                '$' => Tok::Dollar,
                _ => Tok::Other,
            };
            out.push((tok, line));
            i += 1;
        }
    }
    out
}

/// A path that starts at `crate` or `super`, as written, with the line it is on.
#[derive(Debug, Clone)]
struct Written {
    segments: Vec<String>,
    line: usize,
}

/// Every path in `toks` that starts with `crate::` or `super::`, use trees expanded
/// (`crate::kernel::{store::Store, tenant}` gives two paths).
fn written_paths(toks: &[(Tok, usize)]) -> Vec<Written> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts = matches!(&toks[i].0, Tok::Ident(s) if s == "crate" || s == "super")
            && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep)
            && (i == 0 || toks[i - 1].0 != Tok::Dollar)
            && (i == 0 || toks[i - 1].0 != Tok::PathSep);
        if starts {
            let mut prefix = Vec::new();
            let end = use_tree(toks, i, &mut prefix, &mut out);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses a use tree (or a plain path) at `i`, pushing every full path; returns the
/// index after it.
fn use_tree(
    toks: &[(Tok, usize)],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Written>,
) -> usize {
    let depth = prefix.len();
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Tok::Ident(name)) => {
                prefix.push(name.clone());
                let line = toks[i].1;
                i += 1;
                if toks.get(i).map(|t| &t.0) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                out.push(Written {
                    segments: prefix.clone(),
                    line,
                });
                break;
            }
            Some(Tok::Open) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Tok::Close) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Comma) => i += 1,
                        None => break,
                        _ => {
                            let before = i;
                            i = use_tree(toks, i, prefix, out);
                            // Skip `as name` and anything else up to `,` or `}`.
                            while !matches!(
                                toks.get(i).map(|t| &t.0),
                                Some(Tok::Comma | Tok::Close) | None
                            ) {
                                i += 1;
                            }
                            if i == before {
                                i += 1;
                            }
                        }
                    }
                }
                break;
            }
            Some(Tok::Star) => {
                prefix.push("*".to_owned());
                out.push(Written {
                    segments: prefix.clone(),
                    line: toks[i].1,
                });
                i += 1;
                break;
            }
            _ => {
                if prefix.len() > depth {
                    out.push(Written {
                        segments: prefix.clone(),
                        line: toks.get(i.saturating_sub(1)).map_or(0, |t| t.1),
                    });
                }
                break;
            }
        }
    }
    prefix.truncate(depth);
    i
}

// ---------------------------------------------------------------------------------
// The module graph
// ---------------------------------------------------------------------------------

/// `layer::module`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Module {
    layer: usize,
    name: String,
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{}", LAYERS[self.layer], self.name)
    }
}

#[derive(Debug)]
struct Graph {
    /// from → to → where (`kernel/store.rs:12`), self references left out.
    edges: BTreeMap<Module, BTreeMap<Module, Vec<String>>>,
}

impl Graph {
    /// The graph of `files` (paths relative to `src`). Errors on a file outside the
    /// layers and on a `crate::` path that names no module.
    fn of(files: &[(String, String)]) -> Result<Self, String> {
        // Modules, from the files.
        let mut modules: BTreeSet<Module> = BTreeSet::new();
        for (rel, _) in files {
            let path = module_path(rel);
            match path.len() {
                0 => {}
                1 if LAYERS.contains(&path[0].as_str()) => {}
                _ => {
                    let layer = LAYERS
                        .iter()
                        .position(|l| *l == path[0])
                        .filter(|_| path.len() >= 2)
                        .ok_or_else(|| {
                            format!(
                                "src/{rel} is in no layer: put it under src/{}/",
                                LAYERS.join("/, src/")
                            )
                        })?;
                    modules.insert(Module {
                        layer,
                        name: path[1].clone(),
                    });
                }
            }
        }
        let module = |layer: &str, name: &str| {
            let layer = LAYERS.iter().position(|l| *l == layer)?;
            let m = Module {
                layer,
                name: name.to_owned(),
            };
            modules.contains(&m).then_some(m)
        };

        // Root re-exports (`pub use kernel::store;`, `pub use kernel::tenant::TenantId;`):
        // the name at the root → its module.
        let mut aliases: BTreeMap<String, Module> = BTreeMap::new();
        if let Some((_, lib)) = files.iter().find(|(rel, _)| rel == "lib.rs") {
            let toks = tokens(lib);
            for (i, (tok, _)) in toks.iter().enumerate() {
                if *tok != Tok::Ident("use".to_owned()) {
                    continue;
                }
                let mut found = Vec::new();
                use_tree(&toks, i + 1, &mut Vec::new(), &mut found);
                for written in found {
                    let s = &written.segments;
                    if s.len() >= 2
                        && let Some(m) = module(&s[0], &s[1])
                    {
                        let alias = s.last().expect("two segments").clone();
                        aliases.insert(alias, m);
                    }
                }
            }
        }

        let mut edges: BTreeMap<Module, BTreeMap<Module, Vec<String>>> = BTreeMap::new();
        for (rel, text) in files {
            let path = module_path(rel);
            let written = written_paths(&tokens(text));
            if path.len() < 2 {
                // lib.rs and the layer files declare and re-export; they hold no code.
                if path.len() == 1
                    && let Some(w) = written.first()
                {
                    return Err(format!(
                        "src/{rel}:{}: a layer file only declares its modules ({})",
                        w.line,
                        w.segments.join("::")
                    ));
                }
                continue;
            }
            let from = module(&path[0], &path[1]).expect("modules come from the files");
            for w in written {
                let target = if w.segments[0] == "crate" {
                    let s = &w.segments[1..];
                    let resolved = match s {
                        [layer, name, ..] if LAYERS.contains(&layer.as_str()) => {
                            module(layer, name)
                        }
                        [alias, ..] => aliases.get(alias).cloned(),
                        [] => None,
                    };
                    Some(resolved.ok_or_else(|| {
                        format!(
                            "src/{rel}:{}: {} names no module of a layer",
                            w.line,
                            w.segments.join("::")
                        )
                    })?)
                } else {
                    // `super::` from the file's own place. A path that then names no
                    // module was written inside an inline module (`mod tests { use
                    // super::* }`) and stays within its file.
                    let supers = w.segments.iter().take_while(|s| *s == "super").count();
                    let mut abs: Vec<String> = path[..path.len().saturating_sub(supers)].to_vec();
                    abs.extend(w.segments[supers..].iter().cloned());
                    match abs.as_slice() {
                        [layer, name, ..] => module(layer, name),
                        [alias, ..] => aliases.get(alias).cloned(),
                        [] => None,
                    }
                };
                if let Some(to) = target
                    && to != from
                {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_default()
                        .push(format!("src/{rel}:{}", w.line));
                }
            }
        }
        Ok(Self { edges })
    }

    fn has_edge(&self, from: &str, to: &str) -> bool {
        self.edges
            .iter()
            .any(|(f, tos)| f.to_string() == from && tos.keys().any(|t| t.to_string() == to))
    }

    /// Every broken rule, one line each.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (from, tos) in &self.edges {
            for (to, places) in tos {
                if to.layer > from.layer {
                    problems.push(format!(
                        "{from} → {to}: a {} module may not refer to the {} ({})",
                        LAYERS[from.layer],
                        LAYERS[to.layer],
                        places.join(", ")
                    ));
                }
            }
        }
        for cycle in self.cycles() {
            let names: Vec<String> = cycle.iter().map(ToString::to_string).collect();
            problems.push(format!("cycle: {} → {}", names.join(" → "), names[0]));
        }
        problems
    }

    /// One cycle per strongly connected component of more than one module (Tarjan),
    /// as a path through it.
    fn cycles(&self) -> Vec<Vec<Module>> {
        let nodes: Vec<&Module> = self
            .edges
            .iter()
            .flat_map(|(f, tos)| std::iter::once(f).chain(tos.keys()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index_of = |m: &Module| nodes.iter().position(|n| *n == m).expect("node");
        let succ: Vec<Vec<usize>> = nodes
            .iter()
            .map(|n| {
                self.edges
                    .get(*n)
                    .map(|tos| tos.keys().map(index_of).collect())
                    .unwrap_or_default()
            })
            .collect();

        struct Tarjan<'a> {
            succ: &'a [Vec<usize>],
            index: Vec<Option<usize>>,
            low: Vec<usize>,
            on_stack: Vec<bool>,
            stack: Vec<usize>,
            next: usize,
            components: Vec<Vec<usize>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: usize) {
                self.index[v] = Some(self.next);
                self.low[v] = self.next;
                self.next += 1;
                self.stack.push(v);
                self.on_stack[v] = true;
                for &w in &self.succ[v] {
                    match self.index[w] {
                        None => {
                            self.visit(w);
                            self.low[v] = self.low[v].min(self.low[w]);
                        }
                        Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                        Some(_) => {}
                    }
                }
                if Some(self.low[v]) == self.index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    self.components.push(component);
                }
            }
        }
        let n = nodes.len();
        let mut t = Tarjan {
            succ: &succ,
            index: vec![None; n],
            low: vec![0; n],
            on_stack: vec![false; n],
            stack: Vec::new(),
            next: 0,
            components: Vec::new(),
        };
        for v in 0..n {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }

        // Within a component, walk from its first node along edges that stay inside
        // until a node repeats: that stretch is a cycle.
        let mut cycles = Vec::new();
        for component in t.components.into_iter().filter(|c| c.len() > 1) {
            let inside: BTreeSet<usize> = component.iter().copied().collect();
            let mut walk = vec![component[0]];
            loop {
                let last = *walk.last().expect("non-empty");
                let next = succ[last]
                    .iter()
                    .copied()
                    .find(|w| inside.contains(w))
                    .expect("a node of a component has a successor inside it");
                if let Some(pos) = walk.iter().position(|&w| w == next) {
                    cycles.push(walk[pos..].iter().map(|&i| nodes[i].clone()).collect());
                    break;
                }
                walk.push(next);
            }
        }
        cycles
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (from, tos) in &self.edges {
            let tos: Vec<String> = tos.keys().map(ToString::to_string).collect();
            writeln!(f, "  {from} → {}", tos.join(", "))?;
        }
        Ok(())
    }
}
