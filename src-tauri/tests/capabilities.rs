//! The page's capability file grants exactly the app's own commands (and event listening), no more
//! and no fewer: the least-privilege promise of `capabilities/default.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

include!("../command-names.rs");

#[test]
fn the_capability_file_grants_exactly_our_commands() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/capabilities/default.json");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut granted: Vec<String> = file["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    granted.sort();
    let mut expected: Vec<String> = COMMAND_NAMES
        .iter()
        .map(|c| format!("allow-{}", c.replace('_', "-")))
        .chain([
            "core:event:allow-listen".to_owned(),
            "core:event:allow-unlisten".to_owned(),
        ])
        .collect();
    expected.sort();
    assert_eq!(granted, expected);
}
