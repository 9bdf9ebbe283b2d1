//! Round trips and adversarial inputs for both envelope algorithms.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use lattice_crypto::lattice_v1::{self, Context};
use lattice_crypto::{
    ml_kem_aes, CryptoError, KemKeyPair, SealedEnvelope, KEM_CIPHERTEXT_LEN, NONCE_LEN, TAG_LEN,
};
use support::rng;

const CTX: Context<'static> = Context {
    sender_id: "alice",
    recipient_id: "bob",
    message_id: "01J9Z3K8Q4W6X2Y7V5T0R1S3N8",
};

/// Both algorithms behind one signature, so adversarial tests run on each.
#[derive(Clone, Copy, Debug)]
enum Alg {
    MlKemAes,
    LatticeV1,
}

const ALGS: [Alg; 2] = [Alg::MlKemAes, Alg::LatticeV1];

impl Alg {
    fn seal(self, seed: u64, to: &KemKeyPair, plaintext: &[u8]) -> SealedEnvelope {
        let mut rng = rng(seed);
        match self {
            Alg::MlKemAes => ml_kem_aes::seal(&mut rng, to.public_key(), plaintext).unwrap(),
            Alg::LatticeV1 => lattice_v1::seal(&mut rng, to.public_key(), &CTX, plaintext).unwrap(),
        }
    }

    fn open(self, with: &KemKeyPair, envelope: &SealedEnvelope) -> Result<Vec<u8>, CryptoError> {
        match self {
            Alg::MlKemAes => ml_kem_aes::open(with, envelope),
            Alg::LatticeV1 => lattice_v1::open(with, &CTX, envelope),
        }
        .map(|p| p.to_vec())
    }
}

fn bob() -> KemKeyPair {
    KemKeyPair::generate(&mut rng(0xb0b))
}

#[test]
fn round_trips() {
    let bob = bob();
    let long = vec![0x5a; 100_000];
    for alg in ALGS {
        for plaintext in [&b""[..], b"x", "héllo ✓ 🌍".as_bytes(), &long] {
            let envelope = alg.seal(1, &bob, plaintext);
            assert_eq!(envelope.cipher_text.len(), KEM_CIPHERTEXT_LEN, "{alg:?}");
            assert_eq!(
                envelope.encrypted_data.len(),
                NONCE_LEN + plaintext.len() + TAG_LEN,
                "{alg:?}"
            );
            assert_eq!(alg.open(&bob, &envelope).unwrap(), plaintext, "{alg:?}");
        }
    }
}

#[test]
fn fresh_randomness_per_seal() {
    let bob = bob();
    let mut rng = rng(2);
    let a = ml_kem_aes::seal(&mut rng, bob.public_key(), b"same").unwrap();
    let b = ml_kem_aes::seal(&mut rng, bob.public_key(), b"same").unwrap();
    assert_ne!(a.cipher_text, b.cipher_text);
    assert_ne!(a.encrypted_data[..NONCE_LEN], b.encrypted_data[..NONCE_LEN]);
    let c = lattice_v1::seal(&mut rng, bob.public_key(), &CTX, b"same").unwrap();
    let d = lattice_v1::seal(&mut rng, bob.public_key(), &CTX, b"same").unwrap();
    assert_ne!(c.cipher_text, d.cipher_text);
    assert_ne!(c.encrypted_data, d.encrypted_data);
}

#[test]
fn algorithms_do_not_open_each_other() {
    let bob = bob();
    let classic = Alg::MlKemAes.seal(3, &bob, b"cross");
    let v1 = Alg::LatticeV1.seal(3, &bob, b"cross");
    assert_eq!(
        Alg::LatticeV1.open(&bob, &classic),
        Err(CryptoError::Decrypt)
    );
    assert_eq!(Alg::MlKemAes.open(&bob, &v1), Err(CryptoError::Decrypt));
}

/// Flips bits of `envelope` at the given (field, byte, bit) positions and expects `Decrypt`.
fn assert_flips_refused(
    alg: Alg,
    bob: &KemKeyPair,
    envelope: &SealedEnvelope,
    positions: impl Iterator<Item = (bool, usize, u8)>,
) {
    assert!(alg.open(bob, envelope).is_ok());
    for (in_kem_ct, byte, bit) in positions {
        let mut bad = envelope.clone();
        let field = if in_kem_ct {
            &mut bad.cipher_text
        } else {
            &mut bad.encrypted_data
        };
        field[byte] ^= 1 << bit;
        assert_eq!(
            alg.open(bob, &bad),
            Err(CryptoError::Decrypt),
            "{alg:?} {} byte {byte} bit {bit}",
            if in_kem_ct {
                "cipher_text"
            } else {
                "encrypted_data"
            }
        );
    }
}

/// Every bit of `encrypted_data`, and every byte of `cipher_text` with the flipped bit cycling
/// through 0..8 (so each byte and each bit position is hit). Debug-build ML-KEM makes the full
/// 8704-bit sweep of `cipher_text` take about a minute; it is `bit_flips_exhaustive` below.
fn bit_flips(alg: Alg) {
    let bob = bob();
    let envelope = alg.seal(4, &bob, b"hi!");
    let data_bits =
        (0..envelope.encrypted_data.len()).flat_map(|i| (0..8).map(move |b| (false, i, b)));
    let ct_bytes = (0..envelope.cipher_text.len()).map(|i| (true, i, (i % 8) as u8));
    assert_flips_refused(alg, &bob, &envelope, data_bits.chain(ct_bytes));
}

#[test]
fn bit_flips_are_refused_ml_kem_aes() {
    bit_flips(Alg::MlKemAes);
}

#[test]
fn bit_flips_are_refused_lattice_v1() {
    bit_flips(Alg::LatticeV1);
}

#[test]
#[ignore = "slow in debug builds (~1 min); run with --ignored or --release"]
fn bit_flips_exhaustive() {
    let bob = bob();
    for alg in ALGS {
        let envelope = alg.seal(4, &bob, b"hi!");
        let all =
            |len: usize, kem: bool| (0..len).flat_map(move |i| (0..8).map(move |b| (kem, i, b)));
        let positions =
            all(envelope.cipher_text.len(), true).chain(all(envelope.encrypted_data.len(), false));
        assert_flips_refused(alg, &bob, &envelope, positions);
    }
}

#[test]
fn truncated_extended_and_empty_inputs_are_refused() {
    let bob = bob();
    for alg in ALGS {
        let good = alg.seal(5, &bob, b"payload");
        let ct_len = good.cipher_text.len();
        let data_len = good.encrypted_data.len();
        let mut cases = Vec::new();
        for n in [0, 1, ct_len - 1] {
            let mut e = good.clone();
            e.cipher_text.truncate(n);
            cases.push(e);
        }
        let mut e = good.clone();
        e.cipher_text.push(0);
        cases.push(e);
        for n in 0..data_len {
            let mut e = good.clone();
            e.encrypted_data.truncate(n);
            cases.push(e);
        }
        let mut e = good.clone();
        e.encrypted_data.push(0);
        cases.push(e);
        // The tag moved out of place: right length, wrong layout.
        let mut e = good.clone();
        e.encrypted_data.rotate_right(1);
        cases.push(e);
        cases.push(SealedEnvelope {
            cipher_text: Vec::new(),
            encrypted_data: Vec::new(),
        });
        cases.push(SealedEnvelope {
            cipher_text: vec![0; ct_len],
            encrypted_data: vec![0; NONCE_LEN + TAG_LEN],
        });
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(
                alg.open(&bob, case),
                Err(CryptoError::Decrypt),
                "{alg:?} case {i}"
            );
        }
    }
}

#[test]
fn wrong_recipient_is_refused() {
    let bob = bob();
    let eve = KemKeyPair::generate(&mut rng(0xe7e));
    for alg in ALGS {
        let envelope = alg.seal(6, &bob, b"for bob only");
        assert_eq!(
            alg.open(&eve, &envelope),
            Err(CryptoError::Decrypt),
            "{alg:?}"
        );
    }
}

#[test]
fn lattice_v1_is_bound_to_its_context() {
    let bob = bob();
    let envelope = lattice_v1::seal(&mut rng(7), bob.public_key(), &CTX, b"bound").unwrap();
    let other_contexts = [
        Context {
            sender_id: "mallory",
            ..CTX
        },
        Context {
            recipient_id: "carol",
            ..CTX
        },
        Context {
            message_id: "01J9Z3K8Q4W6X2Y7V5T0R1S3N9",
            ..CTX
        },
        Context {
            message_id: "",
            ..CTX
        },
        // Swapped roles: the reply direction must not open.
        Context {
            sender_id: CTX.recipient_id,
            recipient_id: CTX.sender_id,
            ..CTX
        },
        // Same concatenated bytes, different split: lp() keeps them apart.
        Context {
            sender_id: "alic",
            recipient_id: "ebob",
            ..CTX
        },
        Context {
            sender_id: "alice",
            recipient_id: "bob0",
            message_id: "1J9Z3K8Q4W6X2Y7V5T0R1S3N8",
        },
    ];
    for ctx in &other_contexts {
        assert_eq!(
            lattice_v1::open(&bob, ctx, &envelope),
            Err(CryptoError::Decrypt),
            "{ctx:?}"
        );
    }
    assert_eq!(
        lattice_v1::open(&bob, &CTX, &envelope).unwrap().as_slice(),
        b"bound"
    );
}

#[test]
fn replayed_envelope_under_a_new_message_id_is_refused() {
    // A server (or anyone) re-sends a captured envelope as if it were a new message.
    let bob = bob();
    let first = Context {
        message_id: "m-1",
        ..CTX
    };
    let envelope = lattice_v1::seal(&mut rng(8), bob.public_key(), &first, b"pay 10").unwrap();
    assert!(lattice_v1::open(&bob, &first, &envelope).is_ok());
    for mid in ["m-2", "m-10", "M-1", "m-1 "] {
        let replay = Context {
            message_id: mid,
            ..CTX
        };
        assert_eq!(
            lattice_v1::open(&bob, &replay, &envelope),
            Err(CryptoError::Decrypt)
        );
    }
}

#[test]
fn over_long_ids() {
    let bob = bob();
    let long = "x".repeat(65_536);
    let ctx = Context {
        sender_id: &long,
        ..CTX
    };
    assert_eq!(
        lattice_v1::seal(&mut rng(9), bob.public_key(), &ctx, b"x"),
        Err(CryptoError::FieldTooLong("senderId"))
    );
    let ok = lattice_v1::seal(&mut rng(9), bob.public_key(), &CTX, b"x").unwrap();
    assert_eq!(lattice_v1::open(&bob, &ctx, &ok), Err(CryptoError::Decrypt));
    // 65535 bytes is the longest id lp() can carry.
    let max = "y".repeat(65_535);
    let ctx = Context {
        message_id: &max,
        ..CTX
    };
    let e = lattice_v1::seal(&mut rng(9), bob.public_key(), &ctx, b"x").unwrap();
    assert_eq!(lattice_v1::open(&bob, &ctx, &e).unwrap().as_slice(), b"x");
}

#[test]
fn seal_deterministic_is_deterministic() {
    let bob = bob();
    let a = ml_kem_aes::seal_deterministic(bob.public_key(), &[1; 32], &[2; 12], b"kat").unwrap();
    let b = ml_kem_aes::seal_deterministic(bob.public_key(), &[1; 32], &[2; 12], b"kat").unwrap();
    assert_eq!(a, b);
    assert_eq!(&a.encrypted_data[..NONCE_LEN], &[2; 12]);
    assert_eq!(ml_kem_aes::open(&bob, &a).unwrap().as_slice(), b"kat");
}

#[test]
fn error_is_opaque() {
    assert_eq!(CryptoError::Decrypt.to_string(), "decryption failed");
}
