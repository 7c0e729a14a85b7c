//! What the source-reading tests (`public_api`, `modules`) share: where the workspace is, and
//! the attributes of parsed items.

use std::path::{Path, PathBuf};

use syn::{Attribute, Item, Meta};

/// The workspace root (the parent of the tests crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The attributes of any item.
pub fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The file a `#[path = "…"]` attribute names, if any.
pub fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// Reads and parses one source file; a file that cannot be read or parsed fails the test.
pub fn parse_file(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {path:?}: {e}"))
}

/// Where the file module `m` (`mod name;`, no body) is read from.
pub struct ModuleFile {
    /// The parsed file.
    pub file: syn::File,
    /// Where its own `mod x;` files live.
    pub dir: PathBuf,
    /// What its own `#[path]` attributes are relative to.
    pub path_base: PathBuf,
}

/// Finds and parses the file of `mod name;` declared in a module whose `mod x;` files live
/// in `dir` and whose `#[path]` attributes are relative to `path_base`: `#[path]`, else
/// `name.rs`, else `name/mod.rs`.
pub fn module_file(m: &syn::ItemMod, dir: &Path, path_base: &Path) -> ModuleFile {
    let name = m.ident.to_string();
    let attr = path_attr(&m.attrs);
    let file = match &attr {
        Some(p) => path_base.join(p),
        None => {
            let flat = dir.join(format!("{name}.rs"));
            if flat.exists() {
                flat
            } else {
                dir.join(&name).join("mod.rs")
            }
        }
    };
    let parent = file
        .parent()
        .expect("a module file has a folder")
        .to_path_buf();
    // A `#[path]` file, like a `mod.rs`, keeps its children beside it.
    let beside = attr.is_some() || file.file_name().is_some_and(|n| n == "mod.rs");
    ModuleFile {
        file: parse_file(&file),
        dir: if beside {
            parent.clone()
        } else {
            parent.join(&name)
        },
        path_base: parent,
    }
}
