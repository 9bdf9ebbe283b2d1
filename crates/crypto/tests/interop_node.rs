//! Interoperability with the original client's JavaScript crypto, run through
//! `tests/node/interop-cli.mjs` (`@noble/post-quantum` 0.4.1 + Node's AES-256-GCM).
//!
//! Needs `node` on the PATH and `npm ci --prefix tests/node` run once. The tests fail (they do
//! not skip) when either is missing, so CI cannot pass without actually checking interop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use lattice_crypto::lattice_v1::{self, Context};
use lattice_crypto::{ml_kem_aes, KemKeyPair, KemPublicKey, SealedEnvelope};
use rand_core::OsRng;
use serde_json::{json, Value};
use support::{b64, unb64};

const SETUP: &str =
    "run `npm ci --prefix tests/node` from the repository root (needs Node.js ≥ 18)";

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

/// Runs `node interop-cli.mjs <args>` with `stdin`, returns stdout; panics with the stderr.
fn node(args: &[&str], stdin: &str) -> String {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/@noble/post-quantum/package.json")
            .is_file(),
        "tests/node/node_modules is missing: {SETUP}"
    );
    let mut child = Command::new("node")
        .arg(dir.join("interop-cli.mjs"))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js and {SETUP}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node interop-cli.mjs {} failed: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn to_json(algorithm: &str, e: &SealedEnvelope) -> String {
    json!({
        "algorithm": algorithm,
        "serializedCipherText": b64(&e.cipher_text),
        "serializedEncryptedData": b64(&e.encrypted_data),
    })
    .to_string()
}

fn from_json(algorithm: &str, text: &str) -> SealedEnvelope {
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["algorithm"], algorithm);
    SealedEnvelope {
        cipher_text: unb64(v["serializedCipherText"].as_str().unwrap()),
        encrypted_data: unb64(v["serializedEncryptedData"].as_str().unwrap()),
    }
}

/// A Node-generated key pair: (public key, FIPS 203 decapsulation key), base64.
fn node_keygen(seed: Option<&str>) -> (String, String) {
    let out = node(&["keygen"].into_iter().chain(seed).collect::<Vec<_>>(), "");
    let v: Value = serde_json::from_str(&out).unwrap();
    let pk = v["publicKey"].as_str().unwrap().to_owned();
    let sk = v["secretKey"].as_str().unwrap().to_owned();
    (pk, sk)
}

const TEXTS: [&str; 4] = [
    "hello from Rust",
    "",
    "ünïcödé ✓ 🌍 — \"quotes\" \\ and\nnewlines",
    "x",
];

#[test]
fn node_seals_ml_kem_aes_rust_opens() {
    let bob = KemKeyPair::generate(&mut OsRng);
    let pk = b64(bob.public_key().as_bytes());
    for text in TEXTS {
        let envelope = from_json(ml_kem_aes::ALGORITHM, &node(&["seal", &pk, text], ""));
        let plaintext = ml_kem_aes::open(&bob, &envelope).unwrap();
        assert_eq!(std::str::from_utf8(&plaintext).unwrap(), text);
    }
}

#[test]
fn rust_seals_ml_kem_aes_node_opens() {
    let (pk, sk) = node_keygen(None);
    let recipient = KemPublicKey::from_bytes(&unb64(&pk)).unwrap();
    for text in TEXTS {
        let envelope = ml_kem_aes::seal(&mut OsRng, &recipient, text.as_bytes()).unwrap();
        let opened = node(&["open", &sk], &to_json(ml_kem_aes::ALGORITHM, &envelope));
        assert_eq!(opened, text);
    }
}

#[test]
fn node_refuses_a_tampered_rust_envelope() {
    let (pk, sk) = node_keygen(None);
    let recipient = KemPublicKey::from_bytes(&unb64(&pk)).unwrap();
    let mut envelope = ml_kem_aes::seal(&mut OsRng, &recipient, b"tamper").unwrap();
    *envelope.encrypted_data.last_mut().unwrap() ^= 1;
    let status = Command::new("node")
        .arg(node_dir().join("interop-cli.mjs"))
        .args(["open", &sk])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(to_json(ml_kem_aes::ALGORITHM, &envelope).as_bytes())?;
            child.wait()
        })
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {SETUP}"));
    assert!(!status.success());
}

#[test]
fn same_seed_same_keys() {
    let seed: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(7)).collect();
    let (pk, _) = node_keygen(Some(&hex::encode(&seed)));
    let pair = KemKeyPair::from_seed(&seed.try_into().unwrap());
    assert_eq!(b64(pair.public_key().as_bytes()), pk);
}

#[test]
fn lattice_v1_both_directions() {
    let ctx = Context {
        sender_id: "alice@example",
        recipient_id: "bob",
        message_id: "4f2d8c1e-9b7a-4e3f-8a6d-2c1b0e9f7a5d",
    };
    let args = [ctx.sender_id, ctx.recipient_id, ctx.message_id];

    // Node seals to a Rust key.
    let bob = KemKeyPair::generate(&mut OsRng);
    let pk = b64(bob.public_key().as_bytes());
    let text = "{\"v\":1,\"body\":\"héllo\"}";
    let out = node(&[&["seal-v1", &pk][..], &args, &[text]].concat(), "");
    let envelope = from_json(lattice_v1::ALGORITHM, &out);
    assert_eq!(
        lattice_v1::open(&bob, &ctx, &envelope).unwrap().as_slice(),
        text.as_bytes()
    );

    // Rust seals to a Node key.
    let (pk, sk) = node_keygen(None);
    let recipient = KemPublicKey::from_bytes(&unb64(&pk)).unwrap();
    let envelope = lattice_v1::seal(&mut OsRng, &recipient, &ctx, text.as_bytes()).unwrap();
    let opened = node(
        &[&["open-v1", &sk][..], &args].concat(),
        &to_json(lattice_v1::ALGORITHM, &envelope),
    );
    assert_eq!(opened, text);
}

#[test]
fn node_reproduces_the_shared_vector() {
    // The committed lattice-v1 vector is what the JavaScript code makes today.
    let fresh: Value = serde_json::from_str(&node(&["vector-v1"], "")).unwrap();
    let committed: Value = serde_json::from_str(include_str!("vectors/lattice-v1.json")).unwrap();
    assert_eq!(fresh, committed);
}
