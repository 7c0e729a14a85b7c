//! The repository stands on its own: no source file or document cites a document that is not
//! in the repository, or a tracker's issue number instead of saying what it means.

use std::path::{Path, PathBuf};

/// Text that points outside the repository. Assembled from pieces so this file does not
/// match itself.
fn forbidden() -> Vec<String> {
    vec![
        format!("{}{}", "DESIGN", ".md"),
        format!("{}{}", "DESIGN ", "§"),
        format!("{}{}", "../", "shared"),
        format!("{}{}", "MQTT-", "NOTES"),
    ]
}

/// The word "issue", then spaces or `#`, then a digit (in any case): a number from a tracker
/// the reader cannot see.
fn cites_an_issue_number(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("issue") {
        let after = rest[at + "issue".len()..].trim_start_matches([' ', '#']);
        if after.starts_with(|c: char| c.is_ascii_digit()) && rest[at..].len() > after.len() {
            let gap = &rest[at + "issue".len()..rest.len() - after.len()];
            if !gap.is_empty() {
                return true;
            }
        }
        rest = &rest[at + "issue".len()..];
    }
    false
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            // Build output, VCS data and fuzzing corpora are not the project's text.
            if !matches!(
                name.as_ref(),
                "target" | ".git" | "corpus" | "artifacts" | "proptest-regressions"
            ) {
                files(&path, out);
            }
        } else if [".rs", ".md", ".toml", ".json", ".sh"]
            .iter()
            .any(|ext| name.ends_with(ext))
            || name == "run"
        {
            out.push(path);
        }
    }
}

#[test]
fn no_file_cites_a_document_outside_the_repository_or_an_issue_number() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root");
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(
        all.len() > 50,
        "found only {} files under {}",
        all.len(),
        root.display()
    );
    let forbidden = forbidden();
    let mut found = Vec::new();
    for path in &all {
        // This file spells out what it looks for.
        if path.ends_with("tests/tests/tidy.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f.as_str())) || cites_an_issue_number(line) {
                found.push(format!(
                    "{}:{}: {}",
                    path.strip_prefix(root).unwrap_or(path).display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "outside references:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_issue_number_check_tells_a_citation_from_ordinary_words() {
    // Assembled from pieces, so this file does not cite anything itself.
    let word = "issue";
    assert!(cites_an_issue_number(&format!("// see {word} 12")));
    assert!(cites_an_issue_number(&format!(
        "(I{} #3, item 4)",
        &word[1..]
    )));
    assert!(!cites_an_issue_number("an issue with 12 devices"));
    assert!(!cites_an_issue_number("issued 3 commands"));
    assert!(!cites_an_issue_number("issue12"));
}

/// The LICENSE file is the license every crate declares, so what a user reads and what the
/// package metadata says never disagree.
#[test]
fn the_license_file_matches_the_declared_license() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("the root manifest");
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("license = "))
        .map(|v| v.trim_matches('"'))
        .expect("the workspace declares a license");
    let text = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    let heading: Vec<&str> = text.split_whitespace().take(4).collect();
    let expected = match declared {
        "Apache-2.0" => ["Apache", "License", "Version", "2.0,"],
        other => panic!("no check for license {other}: add its heading here"),
    };
    assert_eq!(
        heading, expected,
        "LICENSE does not hold the {declared} text"
    );
    assert!(text.contains("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"));
}
