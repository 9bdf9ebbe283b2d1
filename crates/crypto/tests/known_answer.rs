//! Known-answer tests against vectors made by the original client's JavaScript library
//! (`@noble/post-quantum` 0.4.1 `ml_kem768` + Node's AES-256-GCM).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use lattice_crypto::{ml_kem_aes, KemKeyPair, KemPublicKey, SealedEnvelope};
use support::{ml_kem_aes_vector, unb64, unhex, ReplayRng};

struct Vector {
    seed: [u8; 64],
    kem_randomness: [u8; 32],
    iv: [u8; 12],
    plaintext: String,
    public_key: Vec<u8>,
    envelope: SealedEnvelope,
}

fn load() -> Vector {
    let v = ml_kem_aes_vector();
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    assert_eq!(v["envelope"]["algorithm"], ml_kem_aes::ALGORITHM);
    Vector {
        seed: unhex(&s("seed")).try_into().unwrap(),
        kem_randomness: unhex(&s("kemRandomness")).try_into().unwrap(),
        iv: unhex(&s("iv")).try_into().unwrap(),
        plaintext: s("plaintext"),
        public_key: unb64(&s("publicKey")),
        envelope: SealedEnvelope {
            cipher_text: unb64(v["envelope"]["serializedCipherText"].as_str().unwrap()),
            encrypted_data: unb64(v["envelope"]["serializedEncryptedData"].as_str().unwrap()),
        },
    }
}

#[test]
fn keygen_from_seed_matches_public_key() {
    let v = load();
    let pair = KemKeyPair::from_seed(&v.seed);
    assert_eq!(pair.public_key().as_bytes(), v.public_key.as_slice());
    assert_eq!(pair.seed(), &v.seed);
    assert_eq!(
        &KemPublicKey::from_bytes(&v.public_key).unwrap(),
        pair.public_key()
    );
}

#[test]
fn open_vector_envelope() {
    let v = load();
    let pair = KemKeyPair::from_seed(&v.seed);
    let plaintext = ml_kem_aes::open(&pair, &v.envelope).unwrap();
    assert_eq!(std::str::from_utf8(&plaintext).unwrap(), v.plaintext);
}

#[test]
fn seal_deterministic_reproduces_vector_envelope() {
    let v = load();
    let recipient = KemPublicKey::from_bytes(&v.public_key).unwrap();
    let envelope = ml_kem_aes::seal_deterministic(
        &recipient,
        &v.kem_randomness,
        &v.iv,
        v.plaintext.as_bytes(),
    )
    .unwrap();
    assert_eq!(envelope, v.envelope);
}

#[test]
fn seal_draws_kem_randomness_then_iv() {
    let v = load();
    let recipient = KemPublicKey::from_bytes(&v.public_key).unwrap();
    let mut rng = ReplayRng::new(&[&v.kem_randomness, &v.iv]);
    let envelope = ml_kem_aes::seal(&mut rng, &recipient, v.plaintext.as_bytes()).unwrap();
    assert!(rng.is_exhausted());
    assert_eq!(envelope, v.envelope);
}

#[test]
fn generate_draws_the_seed() {
    let v = load();
    let mut rng = ReplayRng::new(&[&v.seed]);
    let pair = KemKeyPair::generate(&mut rng);
    assert!(rng.is_exhausted());
    assert_eq!(pair.public_key().as_bytes(), v.public_key.as_slice());
}

/// The `lattice-v1` vector made by the JavaScript implementation in `tests/node/lattice-v1.mjs`.
mod lattice_v1_vector {
    use super::support::{unb64, unhex, ReplayRng};
    use lattice_crypto::lattice_v1::{self, Context};
    use lattice_crypto::{CryptoError, KemKeyPair, SealedEnvelope};

    fn vector() -> serde_json::Value {
        serde_json::from_str(include_str!("vectors/lattice-v1.json")).unwrap()
    }

    fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
        v[k].as_str().unwrap()
    }

    fn envelope(v: &serde_json::Value) -> SealedEnvelope {
        assert_eq!(v["envelope"]["algorithm"], lattice_v1::ALGORITHM);
        SealedEnvelope {
            cipher_text: unb64(v["envelope"]["serializedCipherText"].as_str().unwrap()),
            encrypted_data: unb64(v["envelope"]["serializedEncryptedData"].as_str().unwrap()),
        }
    }

    #[test]
    fn open_and_reproduce() {
        let v = vector();
        let ctx = Context {
            sender_id: s(&v, "senderId"),
            recipient_id: s(&v, "recipientId"),
            message_id: s(&v, "messageId"),
        };
        let seed: [u8; 64] = unhex(s(&v, "seed")).try_into().unwrap();
        let pair = KemKeyPair::from_seed(&seed);
        assert_eq!(
            pair.public_key().as_bytes(),
            unb64(s(&v, "publicKey")).as_slice()
        );

        let expected = envelope(&v);
        let plaintext = lattice_v1::open(&pair, &ctx, &expected).unwrap();
        assert_eq!(std::str::from_utf8(&plaintext).unwrap(), s(&v, "plaintext"));

        let m = unhex(s(&v, "kemRandomness"));
        let nonce = unhex(s(&v, "nonce"));
        let mut rng = ReplayRng::new(&[&m, &nonce]);
        let sealed = lattice_v1::seal(
            &mut rng,
            pair.public_key(),
            &ctx,
            s(&v, "plaintext").as_bytes(),
        )
        .unwrap();
        assert!(rng.is_exhausted());
        assert_eq!(sealed, expected);

        let other = Context {
            message_id: "01J9Z3K8Q4W6X2Y7V5T0R1S3N9",
            ..ctx
        };
        assert_eq!(
            lattice_v1::open(&pair, &other, &expected),
            Err(CryptoError::Decrypt)
        );
    }
}
