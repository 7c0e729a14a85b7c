//! No module cycles: within every crate, the modules that share a parent depend on each other
//! in one direction only, so each can be read, tested and moved without the others.
//!
//! Each crate's sources are parsed with `syn` from `src/lib.rs`, following `mod` declarations
//! (files, `#[path]` and inline modules; `#[cfg(test)]` items are skipped: tests may reach
//! anywhere). A module depends on another when it names it: a `use`, a path in code or in a
//! macro's tokens (`crate::a::b`, `super::b`, `self::b`, or a name imported from there), with
//! imports and re-exports followed to the module that defines the item. A dependency between
//! `a::x` and `b::y` is an edge `a → b` between the siblings under their common parent; a
//! module naming its own ancestor or descendant is no edge. Any strongly connected set of two
//! or more siblings fails the test, with the names that make it up.

mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use source::{item_attrs, module_file, parse_file, workspace_root};
use syn::visit::Visit;
use syn::{Attribute, Item, UseTree};

/// The crates checked: package folder, and the root file of its library.
const CRATES: &[&str] = &[
    "core",
    "machine",
    "store-memory",
    "store-sled",
    "store-postgres",
    "transport-mqtt",
    "service",
    "server",
    "tests",
];

/// Where a path starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    /// `crate::…`
    Crate,
    /// `super::…`, `n` times.
    Super(usize),
    /// `self::…`, or a bare name looked up in the current module.
    Here,
}

/// A path as written in a module, before resolution.
#[derive(Debug, Clone)]
struct RawPath {
    base: Base,
    segments: Vec<String>,
}

#[derive(Debug, Default)]
struct Module {
    children: BTreeSet<String>,
    /// Names brought in by `use` (including re-exports), by their local name.
    imports: BTreeMap<String, RawPath>,
    /// Everything the module's code names.
    refs: Vec<RawPath>,
}

type ModPath = Vec<String>;

#[derive(Debug, Default)]
struct CrateModules {
    modules: BTreeMap<ModPath, Module>,
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().trim() == "test")
    })
}

/// Splits a path's segments into where it starts and the rest.
fn raw(segments: &[String]) -> Option<RawPath> {
    let first = segments.first()?;
    let (base, rest) = match first.as_str() {
        "crate" => (Base::Crate, &segments[1..]),
        "self" => (Base::Here, &segments[1..]),
        "super" => {
            let n = segments.iter().take_while(|s| *s == "super").count();
            (Base::Super(n), &segments[n..])
        }
        _ => (Base::Here, segments),
    };
    Some(RawPath {
        base,
        segments: rest.to_vec(),
    })
}

/// Flattens a use tree into (local name, full path) pairs; globs give a path without a name.
fn flatten_use(
    tree: &UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Option<String>, Vec<String>)>,
) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut full = prefix.clone();
            if name != "self" {
                full.push(name.clone());
            }
            let local = if name == "self" {
                prefix.last().cloned()
            } else {
                Some(name)
            };
            out.push((local, full));
        }
        UseTree::Rename(r) => {
            let mut full = prefix.clone();
            if r.ident != "self" {
                full.push(r.ident.to_string());
            }
            out.push((Some(r.rename.to_string()), full));
        }
        UseTree::Glob(_) => out.push((None, prefix.clone())),
        UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// Collects the paths named by code, including `crate::…`, `super::…` and `self::…` inside
/// macro tokens.
#[derive(Default)]
struct Refs {
    paths: Vec<Vec<String>>,
}

impl Refs {
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.scan_tokens(g.stream()),
                TokenTree::Ident(id)
                    if matches!(id.to_string().as_str(), "crate" | "super" | "self") =>
                {
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    // `::` is two `:` puncts, then an identifier.
                    loop {
                        let colons = matches!((&trees.get(j), &trees.get(j + 1)),
                            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':');
                        match (colons, trees.get(j + 2)) {
                            (true, Some(TokenTree::Ident(next))) => {
                                segs.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.paths.push(segs);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            self.paths
                .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan_tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    // Nested modules and imports are handled by the walker; skip items marked for tests.
    fn visit_item(&mut self, i: &'ast Item) {
        match i {
            Item::Mod(_) => {}
            // An import inside a function body is a reference like any other.
            Item::Use(u) if u.leading_colon.is_none() => {
                let mut out = Vec::new();
                flatten_use(&u.tree, &mut Vec::new(), &mut out);
                self.paths.extend(out.into_iter().map(|(_, full)| full));
            }
            Item::Use(_) => {}
            _ if is_cfg_test(item_attrs(i)) => {}
            _ => syn::visit::visit_item(self, i),
        }
    }

    fn visit_attribute(&mut self, _: &'ast Attribute) {}
}

impl CrateModules {
    /// Reads the module at `path` from its items; `dir` is where its `mod x;` files live,
    /// `path_base` what its `#[path]` attributes are relative to.
    fn walk(&mut self, path: &ModPath, items: &[Item], dir: &Path, path_base: &Path) {
        self.modules.entry(path.clone()).or_default();
        for item in items {
            if is_cfg_test(item_attrs(item)) {
                continue;
            }
            match item {
                Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let mut child = path.clone();
                    child.push(name.clone());
                    self.modules
                        .get_mut(path)
                        .expect("inserted above")
                        .children
                        .insert(name.clone());
                    if let Some((_, inner)) = &m.content {
                        let sub = dir.join(&name);
                        self.walk(&child, inner, &sub, &sub);
                        continue;
                    }
                    let module = module_file(m, dir, path_base);
                    self.walk(&child, &module.file.items, &module.dir, &module.path_base);
                }
                Item::Use(u) => {
                    let mut out = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut out);
                    if u.leading_colon.is_some() {
                        continue;
                    }
                    let module = self.modules.get_mut(path).expect("inserted above");
                    for (local, full) in out {
                        let Some(r) = raw(&full) else { continue };
                        module.refs.push(r.clone());
                        if let Some(local) = local {
                            module.imports.insert(local, r);
                        }
                    }
                }
                other => {
                    let mut refs = Refs::default();
                    refs.visit_item(other);
                    let module = self.modules.get_mut(path).expect("inserted above");
                    module.refs.extend(refs.paths.iter().filter_map(|p| raw(p)));
                }
            }
        }
    }

    /// The module a path leads to (the deepest one it names), following imports; `None` for
    /// paths outside the crate. The flag says whether the whole path named a module.
    fn resolve(&self, from: &ModPath, path: &RawPath, depth: usize) -> Option<(ModPath, bool)> {
        if depth > 16 {
            return None;
        }
        let mut cur: ModPath = match path.base {
            Base::Crate => Vec::new(),
            Base::Super(n) => from[..from.len().checked_sub(n)?].to_vec(),
            Base::Here => from.clone(),
        };
        for (i, seg) in path.segments.iter().enumerate() {
            let module = self.modules.get(&cur)?;
            if module.children.contains(seg) {
                cur.push(seg.clone());
                continue;
            }
            if let Some(import) = module.imports.get(seg) {
                // A bare first name that is an extern crate resolves to nothing.
                let (target, whole) = self.resolve(&cur, import, depth + 1)?;
                if !whole {
                    return Some((target, false));
                }
                cur = target;
                continue;
            }
            if i == 0 && path.base == Base::Here {
                // Not a name of this module: an extern crate, the prelude or a local item.
                return None;
            }
            return Some((cur, false));
        }
        Some((cur, true))
    }

    /// Edges between siblings, with a sample of what made each one.
    fn edges(&self) -> BTreeMap<(ModPath, ModPath), String> {
        let mut edges = BTreeMap::new();
        for (from, module) in &self.modules {
            for r in &module.refs {
                let Some((to, _)) = self.resolve(from, r, 0) else {
                    continue;
                };
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if common == from.len() || common == to.len() {
                    continue;
                }
                let a = from[..=common].to_vec();
                let b = to[..=common].to_vec();
                edges
                    .entry((a, b))
                    .or_insert_with(|| format!("{} names {:?}", show(from), r.segments.join("::")));
            }
        }
        edges
    }
}

fn show(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".to_string()
    } else {
        path.join("::")
    }
}

/// Strongly connected sets of two or more modules (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<(ModPath, ModPath), String>) -> Vec<Vec<ModPath>> {
    let mut nodes: BTreeSet<&ModPath> = BTreeSet::new();
    let mut succ: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        nodes.insert(a);
        nodes.insert(b);
        succ.entry(a).or_default().push(b);
    }
    struct Tarjan<'a> {
        succ: &'a BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        next: usize,
        out: Vec<Vec<ModPath>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in self.succ.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    set.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    self.out.push(set);
                }
            }
        }
    }
    let mut t = Tarjan {
        succ: &succ,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn read_crate(src: &Path) -> CrateModules {
    let parsed = parse_file(&src.join("lib.rs"));
    let mut m = CrateModules::default();
    m.walk(&Vec::new(), &parsed.items, src, src);
    m
}

/// The cycles of one crate, each as its modules and the references that close it.
fn crate_cycles(src: &Path) -> Vec<String> {
    let m = read_crate(src);
    let edges = m.edges();
    cycles(&edges)
        .into_iter()
        .map(|set| {
            let members: BTreeSet<&ModPath> = set.iter().collect();
            let why: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                .map(|((a, b), sample)| format!("    {} → {}: {sample}", show(a), show(b)))
                .collect();
            format!(
                "{}\n{}",
                set.iter().map(show).collect::<Vec<_>>().join(" ↔ "),
                why.join("\n")
            )
        })
        .collect()
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = workspace_root();
    let mut found = Vec::new();
    let mut modules = 0;
    for krate in CRATES {
        let src = root.join(krate).join("src");
        modules += read_crate(&src).modules.len();
        for c in crate_cycles(&src) {
            found.push(format!("{krate}: {c}"));
        }
    }
    // A walker that lost its way would find few modules and so no cycles.
    assert!(modules > 60, "found only {modules} modules");
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

/// The checker itself: a small crate on disk with a cycle through a re-export, a macro and
/// `super`, and one without.
#[test]
fn the_checker_finds_a_cycle_through_imports_macros_and_super() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    let write = |name: &str, text: &str| {
        let p = src.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write(
        "lib.rs",
        "mod a; mod b; mod c; pub use b::Thing;\n#[cfg(test)] mod tests { use crate::c::*; }",
    );
    write("a.rs", "pub fn f() -> crate::Thing { todo!() }");
    write("b/mod.rs", "mod inner; pub use inner::Thing;");
    write(
        "b/inner.rs",
        "pub struct Thing;\nfn g() { format!(\"{}\", super::super::c::X); }",
    );
    write(
        "c.rs",
        "pub const X: u8 = 1; fn h() { let _ = vec![crate::a::f()]; }",
    );
    let found = crate_cycles(src);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("a ↔ b ↔ c"), "{}", found[0]);

    // Break it: `c` no longer names `a`.
    write("c.rs", "pub const X: u8 = 1;");
    assert!(crate_cycles(src).is_empty());
}
