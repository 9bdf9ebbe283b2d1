//! Identity keys, signed statements, fingerprints and the identity file format.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use lattice_crypto::{
    kem_key_signature_message, message_signature_payload, registration_statement,
    verify_kem_key_signature, CryptoError, Identity, IdentityKeyPair, IdentityPublicKey,
    KemKeyPair, SIGNATURE_LEN,
};
use support::{rng, ReplayRng};

#[test]
fn sign_and_verify() {
    let alice = IdentityKeyPair::generate(&mut rng(1));
    let public = alice.public_key();
    let sig = alice.sign(b"statement");
    assert_eq!(sig.len(), SIGNATURE_LEN);
    assert_eq!(public.verify(b"statement", &sig), Ok(()));
    assert_eq!(
        public.verify(b"statemenT", &sig),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(
        public.verify(b"statement", &sig[..63]),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(
        public.verify(b"statement", &[0; 64]),
        Err(CryptoError::BadSignature)
    );
    let mut bad = sig;
    bad[10] ^= 1;
    assert_eq!(
        public.verify(b"statement", &bad),
        Err(CryptoError::BadSignature)
    );
    let bob = IdentityKeyPair::generate(&mut rng(2)).public_key();
    assert_eq!(
        bob.verify(b"statement", &sig),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn strict_verification_rejects_non_canonical_s() {
    // S + L (the group order) is the same scalar, but not the canonical encoding.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let alice = IdentityKeyPair::generate(&mut rng(3));
    let sig = alice.sign(b"m");
    let mut malleated = sig;
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
        malleated[32 + i] = v as u8;
        carry = v >> 8;
    }
    assert_ne!(malleated, sig);
    assert_eq!(
        alice.public_key().verify(b"m", &malleated),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn public_key_round_trip() {
    let alice = IdentityKeyPair::generate(&mut rng(4));
    let public = alice.public_key();
    let parsed = IdentityPublicKey::from_bytes(public.as_bytes()).unwrap();
    assert_eq!(parsed, public);
    assert_eq!(
        format!("{parsed:?}"),
        format!("IdentityPublicKey({})", hex::encode(public.as_bytes()))
    );
}

#[test]
fn secret_round_trip_and_generate_draws_32_bytes() {
    let secret = [0x11; 32];
    let mut replay = ReplayRng::new(&[&secret]);
    let generated = IdentityKeyPair::generate(&mut replay);
    assert!(replay.is_exhausted());
    let rebuilt = IdentityKeyPair::from_secret_bytes(&generated.secret_bytes());
    assert_eq!(rebuilt, generated);
    assert_eq!(*rebuilt.secret_bytes(), secret);
    assert_ne!(IdentityKeyPair::from_secret_bytes(&[0x12; 32]), generated);
    assert!(!format!("{generated:?}").contains("1111"));
}

#[test]
fn kem_key_signature() {
    let me = Identity::generate(&mut rng(5));
    let sig = me.key_signature();
    let kem_pk = me.kem_public_key().as_bytes();
    let mut expected_msg = b"lattice/v1/kem-key".to_vec();
    expected_msg.extend_from_slice(kem_pk);
    assert_eq!(kem_key_signature_message(kem_pk), expected_msg);
    assert_eq!(me.identity_public_key().verify(&expected_msg, &sig), Ok(()));
    assert_eq!(
        verify_kem_key_signature(&me.identity_public_key(), kem_pk, &sig),
        Ok(())
    );

    // A server swapping in another KEM key (or another identity) is caught.
    let other = Identity::generate(&mut rng(6));
    let other_pk = other.kem_public_key().as_bytes();
    assert_eq!(
        verify_kem_key_signature(&me.identity_public_key(), other_pk, &sig),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(
        verify_kem_key_signature(&other.identity_public_key(), kem_pk, &sig),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(
        verify_kem_key_signature(&other.identity_public_key(), other_pk, &sig),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn registration_statement_layout() {
    let nonce: Vec<u8> = (0..32).collect();
    let statement = registration_statement(&nonce, "bob", &[0xaa, 0xbb]).unwrap();
    let mut expected = b"lattice/v1/register".to_vec();
    expected.extend_from_slice(&nonce);
    expected.extend_from_slice(&[0x00, 0x03, b'b', b'o', b'b', 0xaa, 0xbb]);
    assert_eq!(statement, expected);
    assert_eq!(statement.len(), 19 + 32 + 2 + 3 + 2);

    assert_eq!(
        registration_statement(&nonce[..31], "bob", &[]),
        Err(CryptoError::InvalidLength {
            what: "registration nonce",
            expected: 32,
            got: 31
        })
    );
    assert_eq!(
        registration_statement(&nonce, &"b".repeat(65_536), &[]),
        Err(CryptoError::FieldTooLong("clientId"))
    );

    // Signed and checked the way the server does it.
    let me = Identity::generate(&mut rng(7));
    let st = registration_statement(&nonce, "bob", me.kem_public_key().as_bytes()).unwrap();
    let sig = me.identity_key().sign(&st);
    assert!(me.identity_public_key().verify(&st, &sig).is_ok());
    let other_id = registration_statement(&nonce, "bob2", me.kem_public_key().as_bytes()).unwrap();
    assert!(me.identity_public_key().verify(&other_id, &sig).is_err());
    let other_nonce =
        registration_statement(&[9; 32], "bob", me.kem_public_key().as_bytes()).unwrap();
    assert!(me.identity_public_key().verify(&other_nonce, &sig).is_err());
}

#[test]
fn message_signature_binds_every_field() {
    let alice = IdentityKeyPair::generate(&mut rng(8));
    let public = alice.public_key();
    let payload =
        message_signature_payload("alice", "bob", "m-1", 1_700_000_000_123, b"hi").unwrap();
    let sig = alice.sign(&payload);
    assert!(public.verify(&payload, &sig).is_ok());

    let variants = [
        message_signature_payload("alice", "bob", "m-1", 1_700_000_000_123, b"hi!"),
        message_signature_payload("alice", "bob", "m-1", 1_700_000_000_124, b"hi"),
        message_signature_payload("alice", "bob", "m-2", 1_700_000_000_123, b"hi"),
        message_signature_payload("alice", "carol", "m-1", 1_700_000_000_123, b"hi"),
        message_signature_payload("mallory", "bob", "m-1", 1_700_000_000_123, b"hi"),
        message_signature_payload("bob", "alice", "m-1", 1_700_000_000_123, b"hi"),
        // Moving bytes between adjacent fields changes the lp() prefixes.
        message_signature_payload("alic", "ebob", "m-1", 1_700_000_000_123, b"hi"),
    ];
    for v in variants {
        assert_eq!(
            public.verify(&v.unwrap(), &sig),
            Err(CryptoError::BadSignature)
        );
    }
}

#[test]
fn fingerprint_is_stable() {
    // Pinned so that a change to the derivation is a deliberate, visible decision.
    let key = IdentityKeyPair::from_secret_bytes(&[0u8; 32]).public_key();
    let fp = key.fingerprint();
    let text = fp.to_string();
    assert_eq!(text.len(), 71);
    assert_eq!(text.split(' ').count(), 12);
    assert_eq!(fp.short().len(), 23);
    assert_eq!(text, FINGERPRINT_OF_ZERO_SECRET);
}

/// Fingerprint of the public key of the all-zero Ed25519 secret
/// (3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29), computed independently
/// with Python's hashlib from the derivation documented on `Fingerprint`.
const FINGERPRINT_OF_ZERO_SECRET: &str =
    "59801 99144 23321 58473 52158 18189 23247 98217 50990 90821 37642 86369";

#[test]
fn identity_file_round_trip() {
    let me = Identity::generate(&mut rng(9));
    let file = me.to_bytes();
    assert_eq!(file.len(), 101);
    assert_eq!(&file[..5], b"LTID\x01");
    assert_eq!(&file[5..37], &me.identity_key().secret_bytes()[..]);
    assert_eq!(&file[37..], &me.kem().seed()[..]);
    let again = Identity::from_bytes(&file).unwrap();
    assert_eq!(again, me);
    assert_eq!(again.identity_public_key(), me.identity_public_key());
    assert_eq!(again.kem_public_key(), me.kem_public_key());
    assert_eq!(again.key_signature(), me.key_signature());
}

#[test]
fn identity_generate_draws_ed25519_secret_then_kem_seed() {
    let secret = [3u8; 32];
    let seed = [4u8; 64];
    let mut replay = ReplayRng::new(&[&secret, &seed]);
    let me = Identity::generate(&mut replay);
    assert!(replay.is_exhausted());
    let expected = Identity::from_parts(
        IdentityKeyPair::from_secret_bytes(&secret),
        KemKeyPair::from_seed(&seed),
    );
    assert_eq!(me, expected);
    assert_eq!(me.kem(), &KemKeyPair::from_seed(&seed));
}

#[test]
fn identity_file_rejections() {
    let me = Identity::generate(&mut rng(10));
    let file = me.to_bytes().to_vec();
    let mut cases: Vec<Vec<u8>> = vec![Vec::new(), b"LTID".to_vec(), b"LTID\x01".to_vec()];
    for n in [1, 5, 37, 100] {
        cases.push(file[..n].to_vec());
    }
    let mut longer = file.clone();
    longer.push(0);
    cases.push(longer);
    let mut magic = file.clone();
    magic[0] = b'X';
    cases.push(magic);
    let mut lower = file.clone();
    lower[..4].copy_from_slice(b"ltid");
    cases.push(lower);
    for version in [0u8, 2, 0xff] {
        let mut v = file.clone();
        v[4] = version;
        cases.push(v);
    }
    for case in cases {
        assert_eq!(
            Identity::from_bytes(&case).map(|_| ()),
            Err(CryptoError::InvalidIdentityFile),
            "{} bytes",
            case.len()
        );
    }
}

#[test]
fn identity_debug_shows_no_secret() {
    let secret = [0x77; 32];
    let seed = [0x66; 64];
    let me = Identity::from_parts(
        IdentityKeyPair::from_secret_bytes(&secret),
        KemKeyPair::from_seed(&seed),
    );
    let shown = format!("{me:?}");
    assert!(
        shown.starts_with("Identity { identity_key: IdentityKeyPair { public: "),
        "{shown}"
    );
    assert!(
        !shown.contains("7777") && !shown.contains("6666"),
        "{shown}"
    );
}
