//! Property tests: opening never panics on arbitrary bytes, any single bit flip is refused, and
//! the length-prefix encoding is injective.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::sync::OnceLock;

use lattice_crypto::lattice_v1::{self, Context};
use lattice_crypto::{
    lp, ml_kem_aes, CryptoError, Identity, IdentityPublicKey, KemKeyPair, KemPublicKey,
    SealedEnvelope, KEM_CIPHERTEXT_LEN,
};
use proptest::prelude::*;

const CTX: Context<'static> = Context {
    sender_id: "alice",
    recipient_id: "bob",
    message_id: "m-1",
};

fn bob() -> &'static KemKeyPair {
    static BOB: OnceLock<KemKeyPair> = OnceLock::new();
    BOB.get_or_init(|| KemKeyPair::generate(&mut support::rng(42)))
}

fn sealed() -> &'static (SealedEnvelope, SealedEnvelope) {
    static SEALED: OnceLock<(SealedEnvelope, SealedEnvelope)> = OnceLock::new();
    SEALED.get_or_init(|| {
        let mut rng = support::rng(43);
        let pk = bob().public_key();
        (
            ml_kem_aes::seal(&mut rng, pk, b"property").unwrap(),
            lattice_v1::seal(&mut rng, pk, &CTX, b"property").unwrap(),
        )
    })
}

/// KEM ciphertexts of any length, weighted towards the one that passes the length check.
fn kem_ct() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), KEM_CIPHERTEXT_LEN),
        proptest::collection::vec(any::<u8>(), 0..1200),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn open_never_panics_on_arbitrary_bytes(
        cipher_text in kem_ct(),
        encrypted_data in proptest::collection::vec(any::<u8>(), 0..256),
        sender in ".{0,8}",
    ) {
        let envelope = SealedEnvelope { cipher_text, encrypted_data };
        prop_assert_eq!(ml_kem_aes::open(bob(), &envelope), Err(CryptoError::Decrypt));
        let ctx = Context { sender_id: &sender, ..CTX };
        prop_assert_eq!(lattice_v1::open(bob(), &ctx, &envelope), Err(CryptoError::Decrypt));
    }

    #[test]
    fn any_bit_flip_is_refused(
        in_kem_ct in any::<bool>(),
        index in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (classic, v1) = sealed();
        for (is_v1, good) in [(false, classic), (true, v1)] {
            let mut bad = good.clone();
            let field = if in_kem_ct { &mut bad.cipher_text } else { &mut bad.encrypted_data };
            let i = index.index(field.len());
            field[i] ^= 1 << bit;
            let result = if is_v1 {
                lattice_v1::open(bob(), &CTX, &bad)
            } else {
                ml_kem_aes::open(bob(), &bad)
            };
            prop_assert_eq!(result, Err(CryptoError::Decrypt));
        }
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
        let _ = KemPublicKey::from_bytes(&bytes);
        let _ = IdentityPublicKey::from_bytes(&bytes);
        let _ = Identity::from_bytes(&bytes);
        if let Ok(key) = IdentityPublicKey::from_bytes(&bytes[..bytes.len().min(32)]) {
            prop_assert!(key.verify(&bytes, &bytes).is_err());
        }
    }

    #[test]
    fn lp_sequences_are_injective(
        a in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 1..4),
        b in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 1..4),
    ) {
        let encode = |fields: &[Vec<u8>]| {
            let mut out = Vec::new();
            for f in fields {
                lp(&mut out, f).unwrap();
            }
            out
        };
        prop_assert_eq!(encode(&a) == encode(&b), a == b);
    }
}
