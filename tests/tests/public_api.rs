//! The public API of the library crates, as committed text, so an accidental breaking change
//! shows up in review as a diff of `tests/api/<package>.txt`.
//!
//! Each crate's sources are parsed with `syn` (stable Rust: no rustdoc JSON, no extra tools),
//! starting at `src/lib.rs` and following `mod` declarations (files, `#[path]` and inline
//! modules; `#[cfg(test)]` modules and items are skipped). One line is recorded per `pub`
//! element with its module path: free functions and inherent methods (signatures, no bodies),
//! structs / enums / unions with their derives and one line per `pub` field or variant, traits
//! with their supertraits and one line per member, trait impl headers, type aliases, consts with
//! their values, statics, `pub use` re-exports (one line per leaf of the use tree) and
//! `#[macro_export]` macros. Items behind `#[cfg(feature = "x")]` are prefixed `[feature x]`,
//! other `cfg`s `[cfg(...)]`.
//!
//! It is a deliberate over-approximation: private modules are walked too (their `pub` items may
//! be re-exported), paths are those of the defining module rather than the re-export, and a
//! trait impl is kept when its header names any public type of the crate. Macros are not
//! expanded: an item-level macro invocation is recorded as written, and the `pub` items in the
//! template of a crate-local `macro_rules!` are recorded with `$name` placeholders. `serde`
//! attributes are not recorded.
//!
//! If the change is intended, `FLEETOPS_BLESS_API=1 cargo test -p fleetops-tests --test
//! public_api` rewrites the files; commit `tests/api/` with the change.

mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;
use source::{item_attrs, module_file, parse_file, workspace_root};
use syn::{Attribute, Fields, GenericParam, Generics, ImplItem, Item, Meta, TraitItem, UseTree};

/// The library crates whose API embedders depend on: package name and folder.
const CRATES: &[(&str, &str)] = &[
    ("fleetops-core", "core"),
    ("fleetops-machine", "machine"),
    ("fleetops-store-memory", "store-memory"),
    ("fleetops-store-sled", "store-sled"),
    ("fleetops-store-postgres", "store-postgres"),
    ("fleetops-transport-mqtt", "transport-mqtt"),
    ("fleetops-service", "service"),
    ("fleetops-server", "server"),
];

/// Set to rewrite the committed snapshots instead of comparing with them.
const BLESS_VAR: &str = "FLEETOPS_BLESS_API";

/// Lines of each kind (added, removed) shown in a failure.
const SHOWN: usize = 50;

fn hint() -> String {
    format!(
        "if the change is intended, run `{BLESS_VAR}=1 cargo test -p fleetops-tests --test \
         public_api` and commit `tests/api/`"
    )
}

#[test]
fn public_api_matches_the_committed_snapshots() {
    let root = workspace_root();
    let api_dir = root.join("tests").join("api");
    let bless = std::env::var_os(BLESS_VAR).is_some_and(|v| !v.is_empty() && v != "0");
    let mut failures = Vec::new();
    for (package, folder) in CRATES {
        let lines = extract_crate(&package.replace('-', "_"), &root.join(folder).join("src"));
        assert!(
            lines.len() > 5,
            "{package}: only {} API lines found; the extractor is broken",
            lines.len()
        );
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let file = api_dir.join(format!("{package}.txt"));
        if bless {
            std::fs::create_dir_all(&api_dir).expect("create tests/api");
            std::fs::write(&file, &text).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
            continue;
        }
        match std::fs::read_to_string(&file) {
            Err(e) => failures.push(format!(
                "{package}: no committed snapshot {} ({e})",
                file.display()
            )),
            Ok(committed) if committed != text => {
                failures.push(format!("{package}: {}", diff(&committed, &text)))
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "the public API differs from tests/api/:\n\n{}\n\n{}",
        failures.join("\n\n"),
        hint()
    );
}

/// Lines removed from `old` and added in `new` (as multisets), at most [`SHOWN`] of each.
fn diff(old: &str, new: &str) -> String {
    let mut count: BTreeMap<&str, i64> = BTreeMap::new();
    for line in old.lines() {
        *count.entry(line).or_default() -= 1;
    }
    for line in new.lines() {
        *count.entry(line).or_default() += 1;
    }
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for (line, n) in count {
        let side = if n < 0 { &mut removed } else { &mut added };
        for _ in 0..n.unsigned_abs() {
            side.push(line);
        }
    }
    let mut out = format!("{} line(s) removed, {} added", removed.len(), added.len());
    for (sign, lines) in [("-", &removed), ("+", &added)] {
        for line in lines.iter().take(SHOWN) {
            let _ = write!(out, "\n  {sign} {line}");
        }
        if lines.len() > SHOWN {
            let _ = write!(out, "\n  {sign} … and {} more", lines.len() - SHOWN);
        }
    }
    if removed.is_empty() && added.is_empty() {
        out.push_str(" (only the order or line endings differ)");
    }
    out
}

/// The sorted API lines of the crate `name` whose sources are in `src`.
fn extract_crate(name: &str, src: &Path) -> Vec<String> {
    let lib = src.join("lib.rs");
    let file = parse_file(&lib);
    let mut ex = Extractor::default();
    let scope = Scope {
        module: name.to_owned(),
        conds: Vec::new(),
        from_macro: None,
        crate_name: name.to_owned(),
    };
    ex.items(&file.items, &scope, src, src);
    ex.finish()
}

/// The sorted API lines of one source text taken as a crate root (no `mod x;` files).
fn extract_source(name: &str, source: &str) -> Vec<String> {
    let file = syn::parse_file(source).expect("test source parses");
    let mut ex = Extractor::default();
    let scope = Scope {
        module: name.to_owned(),
        conds: Vec::new(),
        from_macro: None,
        crate_name: name.to_owned(),
    };
    ex.items(&file.items, &scope, Path::new("."), Path::new("."));
    ex.finish()
}

/// Where the walk is: module path, the `cfg`s that gate it, and the macro whose template it
/// reads (if any).
#[derive(Clone)]
struct Scope {
    module: String,
    conds: Vec<String>,
    from_macro: Option<String>,
    crate_name: String,
}

impl Scope {
    fn line(&self, body: String) -> String {
        let mut line: String = self.conds.iter().map(|c| format!("[{c}] ")).collect();
        line.push_str(&body);
        if let Some(mac) = &self.from_macro {
            let _ = write!(line, " (from macro {mac}!)");
        }
        line
    }

    fn path(&self, name: impl std::fmt::Display) -> String {
        format!("{}::{name}", self.module)
    }
}

/// What a `cfg` attribute means for the API.
enum Gate {
    /// Test-only code: not API.
    Test,
    /// A condition to print in front of the line.
    Cond(String),
}

#[derive(Default)]
struct Extractor {
    lines: Vec<String>,
    /// Trait impl lines, kept only if they name a public type of the crate.
    impls: Vec<(String, BTreeSet<String>, bool)>,
    /// Names of the crate's public types and traits.
    pub_types: BTreeSet<String>,
}

impl Extractor {
    fn finish(mut self) -> Vec<String> {
        for (line, idents, always) in std::mem::take(&mut self.impls) {
            if always || idents.iter().any(|i| self.pub_types.contains(i)) {
                self.lines.push(line);
            }
        }
        self.lines.sort();
        self.lines.dedup();
        self.lines
    }

    /// `dir`: where `mod x;` files of this module live; `path_base`: what `#[path]` is
    /// relative to.
    fn items(&mut self, items: &[Item], scope: &Scope, dir: &Path, path_base: &Path) {
        for item in items {
            let Some(scope) = gated(scope, item_attrs(item)) else {
                continue;
            };
            self.item(item, &scope, dir, path_base);
        }
    }

    fn item(&mut self, item: &Item, scope: &Scope, dir: &Path, path_base: &Path) {
        match item {
            Item::Mod(m) => {
                let name = m.ident.to_string();
                let child = Scope {
                    module: scope.path(&name),
                    ..scope.clone()
                };
                if let Some((_, content)) = &m.content {
                    let sub = dir.join(&name);
                    self.items(content, &child, &sub, &sub);
                    return;
                }
                let module = module_file(m, dir, path_base);
                self.items(&module.file.items, &child, &module.dir, &module.path_base);
            }
            Item::Fn(f) if is_pub(&f.vis) => {
                let line = signature(&f.sig, &scope.path(&f.sig.ident));
                self.lines.push(scope.line(format!("pub {line}")));
            }
            Item::Struct(s) if is_pub(&s.vis) => {
                self.pub_types.insert(s.ident.to_string());
                let path = scope.path(&s.ident);
                let shape = match &s.fields {
                    Fields::Named(_) => " {..}",
                    Fields::Unnamed(_) => "(..)",
                    Fields::Unit => ";",
                };
                let private = s.fields.iter().any(|f| !is_pub(&f.vis));
                let body = format!(
                    "pub struct {path}{}{}{shape}{}{}",
                    generics(&s.generics),
                    where_clause(&s.generics),
                    if private { " [private fields]" } else { "" },
                    type_attrs(&s.attrs),
                );
                self.lines.push(scope.line(body));
                self.fields(&s.fields, &path, scope);
            }
            Item::Union(u) if is_pub(&u.vis) => {
                self.pub_types.insert(u.ident.to_string());
                let path = scope.path(&u.ident);
                let fields = Fields::Named(u.fields.clone());
                let private = fields.iter().any(|f| !is_pub(&f.vis));
                let body = format!(
                    "pub union {path}{}{}{}{}",
                    generics(&u.generics),
                    where_clause(&u.generics),
                    if private { " [private fields]" } else { "" },
                    type_attrs(&u.attrs),
                );
                self.lines.push(scope.line(body));
                self.fields(&fields, &path, scope);
            }
            Item::Enum(e) if is_pub(&e.vis) => {
                self.pub_types.insert(e.ident.to_string());
                let path = scope.path(&e.ident);
                let body = format!(
                    "pub enum {path}{}{}{}",
                    generics(&e.generics),
                    where_clause(&e.generics),
                    type_attrs(&e.attrs),
                );
                self.lines.push(scope.line(body));
                for v in &e.variants {
                    let Some(vscope) = gated(scope, &v.attrs) else {
                        continue;
                    };
                    let fields = match &v.fields {
                        Fields::Unit => String::new(),
                        Fields::Unnamed(f) => {
                            let tys: Vec<_> = f.unnamed.iter().map(|f| render(&f.ty)).collect();
                            format!("({})", tys.join(", "))
                        }
                        Fields::Named(f) => {
                            let fs: Vec<_> = f
                                .named
                                .iter()
                                .map(|f| format!("{}: {}", field_name(f, 0), render(&f.ty)))
                                .collect();
                            format!(" {{ {} }}", fs.join(", "))
                        }
                    };
                    let disc = v
                        .discriminant
                        .as_ref()
                        .map(|(_, e)| format!(" = {}", render(e)))
                        .unwrap_or_default();
                    let body = format!(
                        "pub variant {path}::{}{fields}{disc}{}",
                        v.ident,
                        type_attrs(&v.attrs)
                    );
                    self.lines.push(vscope.line(body));
                }
            }
            Item::Trait(t) if is_pub(&t.vis) => {
                self.pub_types.insert(t.ident.to_string());
                let path = scope.path(&t.ident);
                let supers = if t.supertraits.is_empty() {
                    String::new()
                } else {
                    format!(": {}", render(&t.supertraits))
                };
                let body = format!(
                    "pub {}{}trait {path}{}{supers}{}{}",
                    if t.unsafety.is_some() { "unsafe " } else { "" },
                    if t.auto_token.is_some() { "auto " } else { "" },
                    generics(&t.generics),
                    where_clause(&t.generics),
                    type_attrs(&t.attrs),
                );
                self.lines.push(scope.line(body));
                for ti in &t.items {
                    let Some(iscope) = gated(scope, trait_item_attrs(ti)) else {
                        continue;
                    };
                    let body = match ti {
                        TraitItem::Fn(f) => format!(
                            "pub {}{}",
                            signature(&f.sig, &format!("{path}::{}", f.sig.ident)),
                            if f.default.is_some() {
                                " [provided]"
                            } else {
                                ""
                            }
                        ),
                        TraitItem::Type(ty) => {
                            let bounds = if ty.bounds.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", render(&ty.bounds))
                            };
                            let default = ty
                                .default
                                .as_ref()
                                .map(|(_, d)| format!(" = {}", render(d)))
                                .unwrap_or_default();
                            format!(
                                "pub type {path}::{}{}{bounds}{}{default}",
                                ty.ident,
                                generics(&ty.generics),
                                where_clause(&ty.generics)
                            )
                        }
                        TraitItem::Const(c) => {
                            let default = c
                                .default
                                .as_ref()
                                .map(|(_, d)| format!(" = {}", render(d)))
                                .unwrap_or_default();
                            format!("pub const {path}::{}: {}{default}", c.ident, render(&c.ty))
                        }
                        TraitItem::Macro(m) => format!("macro {path}::{}", render(&m.mac)),
                        other => format!("{path}::{}", render(other)),
                    };
                    self.lines.push(iscope.line(body));
                }
            }
            Item::Impl(i) => self.impl_block(i, scope),
            Item::Type(t) if is_pub(&t.vis) => {
                self.pub_types.insert(t.ident.to_string());
                let body = format!(
                    "pub type {}{}{} = {}",
                    scope.path(&t.ident),
                    generics(&t.generics),
                    where_clause(&t.generics),
                    render(&t.ty)
                );
                self.lines.push(scope.line(body));
            }
            Item::Const(c) if is_pub(&c.vis) => {
                let body = format!(
                    "pub const {}: {} = {}",
                    scope.path(&c.ident),
                    render(&c.ty),
                    render(&c.expr)
                );
                self.lines.push(scope.line(body));
            }
            Item::Static(s) if is_pub(&s.vis) => {
                let body = format!(
                    "pub static {}{}: {}",
                    if matches!(s.mutability, syn::StaticMutability::Mut(_)) {
                        "mut "
                    } else {
                        ""
                    },
                    scope.path(&s.ident),
                    render(&s.ty)
                );
                self.lines.push(scope.line(body));
            }
            Item::Use(u) if is_pub(&u.vis) => {
                let mut leaves = Vec::new();
                use_leaves(&u.tree, String::new(), &mut leaves);
                for leaf in leaves {
                    let body = format!("pub use {leaf} (in {})", scope.module);
                    self.lines.push(scope.line(body));
                }
            }
            Item::Macro(m) => self.macro_item(m, scope),
            _ => {}
        }
    }

    fn fields(&mut self, fields: &Fields, path: &str, scope: &Scope) {
        for (n, f) in fields.iter().enumerate() {
            if !is_pub(&f.vis) {
                continue;
            }
            let Some(fscope) = gated(scope, &f.attrs) else {
                continue;
            };
            let body = format!("pub {path}::{}: {}", field_name(f, n), render(&f.ty));
            self.lines.push(fscope.line(body));
        }
    }

    fn impl_block(&mut self, i: &syn::ItemImpl, scope: &Scope) {
        let self_ty = render(&i.self_ty);
        let impl_generics = format!("{}{}", generics(&i.generics), where_clause(&i.generics));
        if let Some((bang, trait_path, _)) = &i.trait_ {
            let trait_text = render(trait_path);
            let header = format!(
                "{}impl{} {}{trait_text} for {self_ty}{}",
                if i.unsafety.is_some() { "unsafe " } else { "" },
                generics(&i.generics),
                if bang.is_some() { "!" } else { "" },
                where_clause(&i.generics),
            );
            let mut idents = BTreeSet::new();
            collect_idents(i.self_ty.to_token_stream(), &mut idents);
            collect_idents(trait_path.to_token_stream(), &mut idents);
            let always = scope.from_macro.is_some();
            let line = scope.line(format!("{header} (in {})", scope.module));
            self.impls.push((line, idents, always));
            return;
        }
        let context = if i.generics.params.is_empty() && i.generics.where_clause.is_none() {
            String::new()
        } else {
            format!(" (in impl{impl_generics})")
        };
        let owner = format!("{}::{self_ty}", scope.module);
        for ii in &i.items {
            let attrs = match ii {
                ImplItem::Fn(f) => &f.attrs,
                ImplItem::Const(c) => &c.attrs,
                ImplItem::Type(t) => &t.attrs,
                _ => continue,
            };
            let Some(iscope) = gated(scope, attrs) else {
                continue;
            };
            let body = match ii {
                ImplItem::Fn(f) if is_pub(&f.vis) => {
                    format!(
                        "pub {}",
                        signature(&f.sig, &format!("{owner}::{}", f.sig.ident))
                    )
                }
                ImplItem::Const(c) if is_pub(&c.vis) => format!(
                    "pub const {owner}::{}: {} = {}",
                    c.ident,
                    render(&c.ty),
                    render(&c.expr)
                ),
                ImplItem::Type(t) if is_pub(&t.vis) => {
                    format!("pub type {owner}::{} = {}", t.ident, render(&t.ty))
                }
                _ => continue,
            };
            self.lines.push(iscope.line(format!("{body}{context}")));
        }
    }

    fn macro_item(&mut self, m: &syn::ItemMacro, scope: &Scope) {
        let is_rules = m.mac.path.is_ident("macro_rules");
        match (&m.ident, is_rules) {
            (Some(name), true) if m.attrs.iter().any(|a| a.path().is_ident("macro_export")) => {
                let path = format!("{}::{name}", scope.crate_name);
                self.lines
                    .push(scope.line(format!("#[macro_export] macro_rules! {path}")));
                for matcher in macro_arms(m.mac.tokens.clone()).into_iter().map(|(m, _)| m) {
                    let body = format!("#[macro_export] macro_rules! {path} arm ({matcher})");
                    self.lines.push(scope.line(body));
                }
            }
            (Some(name), true) => {
                // Crate-local: its template may define public items where it is invoked.
                for (_, template) in macro_arms(m.mac.tokens.clone()) {
                    let Ok(file) = syn::parse2::<syn::File>(template) else {
                        continue;
                    };
                    let inner = Scope {
                        from_macro: Some(name.to_string()),
                        ..scope.clone()
                    };
                    let mut sub = Extractor::default();
                    sub.items(&file.items, &inner, Path::new("."), Path::new("."));
                    for line in sub.finish() {
                        self.lines.push(line.replace(MACRO_VAR, "$"));
                    }
                }
            }
            _ => {
                let body = format!("macro {}::{}", scope.module, render(&m.mac));
                self.lines.push(scope.line(body));
            }
        }
    }
}

/// What `$name` in a `macro_rules!` template becomes so `syn` can parse it.
const MACRO_VAR: &str = "__macro_var_";

/// The arms of a `macro_rules!` body: (matcher text, template with `$x` made identifiers and
/// `$(…)*` repetitions dropped).
fn macro_arms(tokens: TokenStream) -> Vec<(String, TokenStream)> {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    let mut arms = Vec::new();
    let mut i = 0;
    while i < tts.len() {
        if let (Some(TokenTree::Group(matcher)), Some(TokenTree::Group(template))) =
            (tts.get(i), tts.get(i + 3))
        {
            arms.push((render(matcher.stream()), substitute(template.stream())));
            i += 4;
        } else {
            i += 1;
        }
    }
    arms
}

fn substitute(tokens: TokenStream) -> TokenStream {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < tts.len() {
        match (&tts[i], tts.get(i + 1)) {
            (TokenTree::Punct(p), Some(TokenTree::Ident(id))) if p.as_char() == '$' => {
                let name = if id == "crate" {
                    "crate".to_owned()
                } else {
                    format!("{MACRO_VAR}{id}")
                };
                out.push(TokenTree::Ident(proc_macro2::Ident::new(&name, id.span())));
                i += 2;
            }
            (TokenTree::Punct(p), Some(TokenTree::Group(g)))
                if p.as_char() == '$' && g.delimiter() == Delimiter::Parenthesis =>
            {
                // `$( … ) sep? op`: skip the repetition.
                i += 2;
                let is_op = |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if matches!(p.as_char(), '*' | '+' | '?'));
                if is_op(tts.get(i)) {
                    i += 1;
                } else {
                    i += 2;
                }
            }
            (TokenTree::Group(g), _) => {
                let mut group = proc_macro2::Group::new(g.delimiter(), substitute(g.stream()));
                group.set_span(g.span());
                out.push(TokenTree::Group(group));
                i += 1;
            }
            (tt, _) => {
                out.push(tt.clone());
                i += 1;
            }
        }
    }
    out.into_iter().collect()
}

fn is_pub(vis: &syn::Visibility) -> bool {
    matches!(vis, syn::Visibility::Public(_))
}

fn trait_item_attrs(item: &TraitItem) -> &[Attribute] {
    match item {
        TraitItem::Const(i) => &i.attrs,
        TraitItem::Fn(i) => &i.attrs,
        TraitItem::Type(i) => &i.attrs,
        TraitItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}

/// The scope of an item with `attrs`, or `None` if it is test-only.
fn gated(scope: &Scope, attrs: &[Attribute]) -> Option<Scope> {
    let mut scope = scope.clone();
    for attr in attrs.iter().filter(|a| a.path().is_ident("cfg")) {
        match cfg_gate(attr) {
            Gate::Test => return None,
            Gate::Cond(c) => scope.conds.push(c),
        }
    }
    Some(scope)
}

fn cfg_gate(attr: &Attribute) -> Gate {
    let Ok(pred) = attr.parse_args::<Meta>() else {
        return Gate::Cond(format!("cfg({})", render(attr.meta.to_token_stream())));
    };
    if only_under_test(&pred) {
        return Gate::Test;
    }
    if let Meta::NameValue(nv) = &pred {
        if nv.path.is_ident("feature") {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                return Gate::Cond(format!("feature {}", s.value()));
            }
        }
    }
    Gate::Cond(format!("cfg({})", render(&pred)))
}

/// `test`, or `all(…, test, …)`: compiled only for the crate's own unit tests.
fn only_under_test(pred: &Meta) -> bool {
    match pred {
        Meta::Path(p) => p.is_ident("test"),
        Meta::List(l) if l.path.is_ident("all") => l
            .parse_args_with(syn::punctuated::Punctuated::<Meta, syn::Token![,]>::parse_terminated)
            .is_ok_and(|args| args.iter().any(only_under_test)),
        _ => false,
    }
}

/// The attributes of a type that are part of its API, as a suffix: derives (sorted, merged),
/// `non_exhaustive`, `repr`, `deprecated`, `doc(hidden)`, `async_trait`.
fn type_attrs(attrs: &[Attribute]) -> String {
    let mut derives = BTreeSet::new();
    let mut others = Vec::new();
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("derive") {
            if let Ok(list) = attr.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            ) {
                derives.extend(list.iter().map(render));
            }
        } else if path.is_ident("non_exhaustive")
            || path.is_ident("repr")
            || path.is_ident("deprecated")
            || path
                .segments
                .last()
                .is_some_and(|s| s.ident == "async_trait")
        {
            others.push(format!("#[{}]", render(&attr.meta)));
        } else if path.is_ident("doc") && render(&attr.meta) == "doc(hidden)" {
            others.push("#[doc(hidden)]".to_owned());
        }
    }
    let mut out = String::new();
    if !derives.is_empty() {
        let list: Vec<_> = derives.into_iter().collect();
        let _ = write!(out, " #[derive({})]", list.join(", "));
    }
    for o in others {
        let _ = write!(out, " {o}");
    }
    out
}

fn field_name(f: &syn::Field, n: usize) -> String {
    f.ident
        .as_ref()
        .map_or_else(|| n.to_string(), ToString::to_string)
}

/// `<…>` of `g` without its where clause (empty if none).
fn generics(g: &Generics) -> String {
    if g.params.is_empty() {
        return String::new();
    }
    let params: Vec<String> = g
        .params
        .iter()
        .map(|p| match p {
            GenericParam::Type(t) => {
                let mut t = t.clone();
                t.attrs.clear();
                render(&t)
            }
            other => render(other),
        })
        .collect();
    format!("<{}>", params.join(", "))
}

fn where_clause(g: &Generics) -> String {
    g.where_clause
        .as_ref()
        .filter(|w| !w.predicates.is_empty())
        .map(|w| format!(" {}", render(w)))
        .unwrap_or_default()
}

/// `fn path<…>(args) -> ret where …`, with qualifiers, without argument patterns' `mut`.
fn signature(sig: &syn::Signature, path: &str) -> String {
    let mut out = String::new();
    if sig.constness.is_some() {
        out.push_str("const ");
    }
    if sig.asyncness.is_some() {
        out.push_str("async ");
    }
    if sig.unsafety.is_some() {
        out.push_str("unsafe ");
    }
    if let Some(abi) = &sig.abi {
        let _ = write!(out, "{} ", render(abi));
    }
    let args: Vec<String> = sig
        .inputs
        .iter()
        .map(|arg| match arg {
            syn::FnArg::Receiver(r) => {
                if r.colon_token.is_some() {
                    format!("self: {}", render(&r.ty))
                } else if let Some((_, lifetime)) = &r.reference {
                    let lt = lifetime
                        .as_ref()
                        .map(|l| format!("{l} "))
                        .unwrap_or_default();
                    let m = if r.mutability.is_some() { "mut " } else { "" };
                    format!("&{lt}{m}self")
                } else {
                    "self".to_owned()
                }
            }
            syn::FnArg::Typed(t) => {
                let pat = match &*t.pat {
                    syn::Pat::Ident(p) => p.ident.to_string(),
                    other => render(other),
                };
                format!("{pat}: {}", render(&t.ty))
            }
        })
        .collect();
    let variadic = sig
        .variadic
        .as_ref()
        .map(|_| if args.is_empty() { "..." } else { ", ..." })
        .unwrap_or_default();
    let _ = write!(
        out,
        "fn {path}{}({}{variadic})",
        generics(&sig.generics),
        args.join(", ")
    );
    if let syn::ReturnType::Type(_, ty) = &sig.output {
        let _ = write!(out, " -> {}", render(ty));
    }
    out.push_str(&where_clause(&sig.generics));
    out
}

fn use_leaves(tree: &UseTree, prefix: String, out: &mut Vec<String>) {
    match tree {
        UseTree::Path(p) => use_leaves(&p.tree, format!("{prefix}{}::", p.ident), out),
        UseTree::Name(n) => out.push(format!("{prefix}{}", n.ident)),
        UseTree::Rename(r) => out.push(format!("{prefix}{} as {}", r.ident, r.rename)),
        UseTree::Glob(_) => out.push(format!("{prefix}*")),
        UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(t, prefix.clone(), out);
            }
        }
    }
}

fn collect_idents(tokens: TokenStream, out: &mut BTreeSet<String>) {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Group(g) => collect_idents(g.stream(), out),
            _ => {}
        }
    }
}

/// One printable piece of a token stream.
#[derive(Clone, PartialEq)]
enum Atom {
    Word(String),
    Op(String),
    Lit(String),
    Open(char),
    Close(char),
}

/// Deterministic, compact text of tokens: `Result<ThingName, IdError>`, `&'a str`,
/// `fleetops_core::ids::JobId`. Doc attributes are dropped.
fn render(tokens: impl ToTokens) -> String {
    let mut atoms = Vec::new();
    flatten(tokens.to_token_stream(), &mut atoms);
    let mut out = String::new();
    let mut depth = 0usize; // open `<` of generics
    let mut prev: Option<&Atom> = None;
    for atom in &atoms {
        if let Some(p) = prev {
            if space_between(p, atom, depth) {
                out.push(' ');
            }
        }
        match atom {
            Atom::Op(o) if o == "<" && generic_open(prev) => depth += 1,
            Atom::Op(o) if o == ">" && depth > 0 => depth -= 1,
            _ => {}
        }
        match atom {
            Atom::Word(s) | Atom::Op(s) | Atom::Lit(s) => out.push_str(s),
            Atom::Open(c) | Atom::Close(c) => out.push(*c),
        }
        prev = Some(atom);
    }
    out
}

fn flatten(tokens: TokenStream, out: &mut Vec<Atom>) {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    let mut joint = String::new();
    while i < tts.len() {
        match &tts[i] {
            TokenTree::Punct(p) if p.as_char() == '#' && is_doc_attr(tts.get(i + 1)) => {
                i += 2;
                continue;
            }
            TokenTree::Punct(p) if p.as_char() == '\'' => {
                if let Some(TokenTree::Ident(id)) = tts.get(i + 1) {
                    out.push(Atom::Word(format!("'{id}")));
                    i += 2;
                    continue;
                }
                out.push(Atom::Op("'".to_owned()));
            }
            TokenTree::Punct(p) => {
                joint.push(p.as_char());
                if p.spacing() == Spacing::Alone
                    || !matches!(tts.get(i + 1), Some(TokenTree::Punct(q)) if q.as_char() != '\'')
                {
                    out.push(Atom::Op(std::mem::take(&mut joint)));
                }
            }
            TokenTree::Ident(id) => out.push(Atom::Word(id.to_string())),
            TokenTree::Literal(l) => out.push(Atom::Lit(l.to_string())),
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => (Some('('), Some(')')),
                    Delimiter::Bracket => (Some('['), Some(']')),
                    Delimiter::Brace => (Some('{'), Some('}')),
                    Delimiter::None => (None, None),
                };
                out.extend(open.map(Atom::Open));
                flatten(g.stream(), out);
                out.extend(close.map(Atom::Close));
            }
        }
        i += 1;
    }
}

fn is_doc_attr(next: Option<&TokenTree>) -> bool {
    let Some(TokenTree::Group(g)) = next else {
        return false;
    };
    g.delimiter() == Delimiter::Bracket
        && matches!(g.stream().into_iter().next(), Some(TokenTree::Ident(i)) if i == "doc")
        && g.stream()
            .into_iter()
            .nth(1)
            .is_some_and(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == '='))
}

const KEYWORDS: &[&str] = &[
    "as", "dyn", "impl", "for", "where", "mut", "in", "const", "return", "if", "else", "match",
    "move", "unsafe", "ref", "static", "type", "struct", "enum", "trait", "let",
];

fn is_plain_word(a: &Atom) -> bool {
    matches!(a, Atom::Word(w) if !KEYWORDS.contains(&w.as_str()) && !w.starts_with('\''))
}

/// Whether a `<` after `prev` opens generics (or a qualified path) rather than compares.
fn generic_open(prev: Option<&Atom>) -> bool {
    !matches!(prev, Some(Atom::Lit(_) | Atom::Close(')')))
}

fn space_between(prev: &Atom, cur: &Atom, depth: usize) -> bool {
    let op = |a: &Atom, s: &str| matches!(a, Atom::Op(o) if o == s);
    if matches!(prev, Atom::Open(_)) || matches!(cur, Atom::Close(_)) {
        return matches!(prev, Atom::Open('{')) || matches!(cur, Atom::Close('}'));
    }
    if op(cur, ",") || op(cur, ";") || op(cur, ":") || op(cur, ".") || op(prev, ".") {
        return false;
    }
    if op(cur, "::") {
        return !(is_plain_word(prev)
            || matches!(prev, Atom::Word(w) if w == "crate" || w == "self" || w == "super")
            || op(prev, ">")
            || matches!(prev, Atom::Close(_)));
    }
    if op(prev, "::") || op(prev, "&") || op(prev, "#") || op(prev, "?") || op(prev, "!") {
        return false;
    }
    if op(cur, "<")
        && (is_plain_word(prev)
            || op(prev, "::")
            || matches!(prev, Atom::Word(w) if w == "impl" || w == "for"))
    {
        return false;
    }
    if op(prev, "<") && depth > 0 {
        return false;
    }
    if op(cur, ">") && depth > 0 {
        return false;
    }
    if op(cur, "!") && matches!(prev, Atom::Word(_)) {
        return false;
    }
    if matches!(cur, Atom::Open('(')) {
        return !(is_plain_word(prev)
            || matches!(prev, Atom::Word(w) if w == "fn" || w == "Self" || w == "self")
            || op(prev, ">")
            || matches!(prev, Atom::Close(_)));
    }
    if matches!(cur, Atom::Open('[')) {
        return !(op(prev, "#") || is_plain_word(prev));
    }
    true
}

#[test]
fn the_extractor_records_public_items_only() {
    let source = r#"
        //! A crate.
        use std::fmt;

        /// Documented.
        pub fn visible(s: &str, mut n: u32) -> Result<Vec<u8>, String> { todo!() }
        fn hidden() {}
        pub(crate) fn crate_only() {}

        #[derive(Debug, Clone)]
        pub struct Config {
            /// The port.
            pub port: u16,
            secret: String,
        }

        impl Config {
            pub const MAX: usize = 8;
            pub fn new<'a>(&'a self, name: impl Into<String>) -> Option<&'a str> { None }
            fn private(&self) {}
        }

        impl fmt::Display for Config {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { Ok(()) }
        }
        struct Private;
        impl Clone for Private { fn clone(&self) -> Self { Private } }

        pub enum Shape { Dot, Line(u32, u32), Box { w: u32, h: u32 } }

        pub trait Store: Send + Sync {
            type Error;
            fn get(&self, key: &str) -> Option<String>;
            fn len(&self) -> usize { 0 }
        }

        pub const LIMIT: u32 = 128;
        pub use self::inner::Thing as Alias;
        pub use inner::{Thing, other::*};

        mod inner {
            pub struct Thing(pub u8, u16);
            pub(super) fn sibling() {}
        }

        #[cfg(test)]
        mod tests {
            pub fn test_helper() {}
        }

        #[cfg(test)]
        pub fn test_only() {}

        #[cfg(feature = "extra")]
        pub fn extra() {}

        #[cfg(feature = "kit")]
        pub mod kit {
            pub type Id = u64;
        }

        macro_rules! make {
            ($name:ident, $max:expr) => {
                #[derive(Debug)]
                pub struct $name(String);
                impl $name {
                    pub const MAX_LEN: usize = $max;
                }
                impl Clone for $name {
                    fn clone(&self) -> Self { Self(self.0.clone()) }
                }
            };
        }
        make!(
            /// A name.
            Name, 64
        );
    "#;
    let expected = [
        "[feature extra] pub fn demo::extra()",
        "[feature kit] pub type demo::kit::Id = u64",
        "impl Clone for $name (in demo) (from macro make!)",
        "impl fmt::Display for Config (in demo)",
        "macro demo::make!(Name, 64)",
        "pub const demo::$name::MAX_LEN: usize = $max (from macro make!)",
        "pub const demo::Config::MAX: usize = 8",
        "pub const demo::LIMIT: u32 = 128",
        "pub demo::Config::port: u16",
        "pub demo::inner::Thing::0: u8",
        "pub enum demo::Shape",
        "pub fn demo::Config::new<'a>(&'a self, name: impl Into<String>) -> Option<&'a str>",
        "pub fn demo::Store::get(&self, key: &str) -> Option<String>",
        "pub fn demo::Store::len(&self) -> usize [provided]",
        "pub fn demo::visible(s: &str, n: u32) -> Result<Vec<u8>, String>",
        "pub struct demo::$name(..) [private fields] #[derive(Debug)] (from macro make!)",
        "pub struct demo::Config {..} [private fields] #[derive(Clone, Debug)]",
        "pub struct demo::inner::Thing(..) [private fields]",
        "pub trait demo::Store: Send + Sync",
        "pub type demo::Store::Error",
        "pub use inner::Thing (in demo)",
        "pub use inner::other::* (in demo)",
        "pub use self::inner::Thing as Alias (in demo)",
        "pub variant demo::Shape::Box { w: u32, h: u32 }",
        "pub variant demo::Shape::Dot",
        "pub variant demo::Shape::Line(u32, u32)",
    ];
    let got = extract_source("demo", source);
    assert_eq!(got, expected.map(String::from), "got:\n{}", got.join("\n"));
}

#[test]
fn rendering_is_compact_and_deterministic() {
    let cases = [
        (
            "std :: collections :: HashMap < K , Vec < u8 > >",
            "std::collections::HashMap<K, Vec<u8>>",
        ),
        ("& 'a mut [u8 ; 4]", "&'a mut [u8; 4]"),
        (
            "Box < dyn Fn (& str) -> bool + Send + 'static >",
            "Box<dyn Fn(&str) -> bool + Send + 'static>",
        ),
        ("< T as Iterator > :: Item", "<T as Iterator>::Item"),
        ("Duration :: from_secs (30)", "Duration::from_secs(30)"),
        ("(u8 , String)", "(u8, String)"),
        (
            "impl Future < Output = () > + Send",
            "impl Future<Output = ()> + Send",
        ),
    ];
    for (input, want) in cases {
        let ts: TokenStream = input.parse().expect("tokens");
        assert_eq!(render(ts), want, "rendering {input:?}");
    }
}

#[test]
fn diff_shows_added_and_removed_lines() {
    let out = diff("a\nb\nc\n", "a\nc\nd\n");
    assert!(out.contains("1 line(s) removed, 1 added"), "{out}");
    assert!(out.contains("- b") && out.contains("+ d"), "{out}");
    assert!(hint().contains("FLEETOPS_BLESS_API=1"));
}
