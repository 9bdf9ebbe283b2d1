//! The React hook and the Vue composable of `docs/ui-integration.md`, run against the generated
//! page contract with Node's built-in test runner (`tests/ui-integration/*.test.mjs`).
//!
//! Needs `node` on the PATH and `npm ci --prefix tests/ui-integration` run once (`make deps`
//! does it). The test fails (it does not skip) when either is missing, so `make test` cannot
//! pass without running the examples.

use std::path::PathBuf;
use std::process::Command;

const SETUP: &str =
    "run `npm ci --prefix tests/ui-integration` from the repository root (needs Node.js ≥ 18)";

#[test]
fn the_react_and_vue_examples_work_against_the_contract() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/ui-integration");
    assert!(
        dir.join("node_modules/react-test-renderer/package.json")
            .is_file()
            && dir.join("node_modules/vue/package.json").is_file(),
        "tests/ui-integration/node_modules is missing: {SETUP}"
    );
    let out = Command::new("node")
        .arg("--test")
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js and {SETUP}"));
    assert!(
        out.status.success(),
        "node --test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
