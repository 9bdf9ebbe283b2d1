//! What an attacker (an outsider, an impostor, a hostile server) sends, and that it is refused
//! with a clear error while the group carries on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_crypto::{lp, IdentityKeyPair};
use lattice_mls::limits::{BINDING_LABEL, CIPHERSUITE, GROUP_NAME_EXTENSION};
use lattice_mls::{GroupId, MlsError};
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage,
    LeafNodeParameters, Lifetime, MlsGroup, OpenMlsProvider, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;
use rand_core::OsRng;
use support::{cid, commit_everywhere, make_group, send_and_check, texts, Device, Pins};
use tls_codec::Serialize as _;

fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[
            ExtensionType::Unknown(GROUP_NAME_EXTENSION),
            ExtensionType::LastResort,
        ]),
        None,
        None,
    )
}

/// A credential in Lattice's format, claiming `id` and `claimed_key`, with the binding signed by
/// `signer_identity` (which may or may not be the claimed key's owner).
fn forged_credential(
    id: &str,
    claimed_key: &IdentityKeyPair,
    signer_identity: &IdentityKeyPair,
    mls_key: &SignatureKeyPair,
) -> CredentialWithKey {
    let mut statement = BINDING_LABEL.to_vec();
    lp(&mut statement, id.as_bytes()).unwrap();
    lp(&mut statement, mls_key.public()).unwrap();
    let mut bytes = (id.len() as u16).to_be_bytes().to_vec();
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(claimed_key.public_key().as_bytes());
    bytes.extend_from_slice(&signer_identity.sign(&statement));
    CredentialWithKey {
        credential: BasicCredential::new(bytes).into(),
        signature_key: mls_key.to_public_vec().into(),
    }
}

#[test]
fn key_packages_not_bound_to_the_pinned_identity_are_refused() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let carol = Device::new("carol", &mut pins);

    // mallory makes a client claiming "carol" with her own identity key.
    let mallory_key = IdentityKeyPair::generate(&mut OsRng);
    let mut fake_carol = Device::with_identity("carol", mallory_key);
    let kp = fake_carol.c().key_packages(1).unwrap().remove(0);
    assert!(matches!(
        alice.c().validate_key_package(&kp, &pins),
        Err(MlsError::IdentityBinding { reason, .. }) if reason.contains("differs")
    ));
    // The same KeyPackage validates for someone who pinned mallory's key: the check is the pin.
    let mut fooled = pins.clone();
    fooled
        .0
        .insert(cid("carol"), fake_carol.identity.public_key());
    assert!(alice.c().validate_key_package(&kp, &fooled).is_ok());

    // Swapped identity key: carol's real key in the credential, the binding signed by mallory.
    let provider = openmls_libcrux_crypto::Provider::new().unwrap();
    let mls_key = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let swapped = forged_credential("carol", &carol.identity, &fake_carol.identity, &mls_key);
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .build(CIPHERSUITE, &provider, &mls_key, swapped)
        .unwrap();
    let kp = bundle.key_package().tls_serialize_detached().unwrap();
    assert!(matches!(
        alice.c().validate_key_package(&kp, &pins),
        Err(MlsError::IdentityBinding { reason, .. }) if reason.contains("does not verify")
    ));
    // The same construction signed by carol's real key is accepted (the forgery is the reason).
    let honest = forged_credential("carol", &carol.identity, &carol.identity, &mls_key);
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .build(CIPHERSUITE, &provider, &mls_key, honest)
        .unwrap();
    let kp = bundle.key_package().tls_serialize_detached().unwrap();
    assert!(alice.c().validate_key_package(&kp, &pins).is_ok());

    // Properly bound but expired (a lifetime in 1970): refused by MLS validation.
    let honest = forged_credential("carol", &carol.identity, &carol.identity, &mls_key);
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .key_package_lifetime(Lifetime::init(1, 2))
        .build(CIPHERSUITE, &provider, &mls_key, honest)
        .unwrap();
    let kp = bundle.key_package().tls_serialize_detached().unwrap();
    assert!(matches!(
        alice.c().validate_key_package(&kp, &pins),
        Err(MlsError::KeyPackage(_))
    ));
    // Properly bound but for the classical suite: refused as another suite.
    let classical = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let honest = forged_credential("carol", &carol.identity, &carol.identity, &mls_key);
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(Capabilities::new(
            None,
            Some(&[classical]),
            None,
            None,
            None,
        ))
        .build(classical, &provider, &mls_key, honest)
        .unwrap();
    let kp = bundle.key_package().tls_serialize_detached().unwrap();
    assert!(matches!(
        alice.c().validate_key_package(&kp, &pins),
        Err(MlsError::Ciphersuite(0x0001))
    ));

    // An id nobody pinned is refused; garbage does not parse.
    let mut stranger = Device::with_identity("stranger", IdentityKeyPair::generate(&mut OsRng));
    let kp = stranger.c().key_packages(1).unwrap().remove(0);
    assert!(matches!(
        alice.c().validate_key_package(&kp, &pins),
        Err(MlsError::IdentityBinding { reason, .. }) if reason.contains("no identity key")
    ));
    assert!(matches!(
        alice.c().validate_key_package(&kp[..kp.len() - 1], &pins),
        Err(MlsError::Malformed { .. })
    ));
}

#[test]
fn a_welcome_from_an_impostor_is_refused_and_nothing_is_stored() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);

    // mallory poses as alice (her own key) and invites bob.
    let mut mallory = Device::with_identity("alice", IdentityKeyPair::generate(&mut OsRng));
    let mut mallorys_pins = pins.clone();
    mallorys_pins
        .0
        .insert(cid("alice"), mallory.identity.public_key());
    let kp = bob.key_package_for(&mut mallory, &mallorys_pins);
    let gid = mallory.c().create_group("trap").unwrap();
    let out = mallory.c().add_members(&gid, &[kp]).unwrap();
    assert!(matches!(
        bob.c().join(&out.welcome.unwrap(), &pins),
        Err(MlsError::IdentityBinding { client_id, .. }) if client_id == "alice"
    ));
    bob.reopen();
    assert!(bob.c().groups().is_empty());

    // The real alice's Welcome works.
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);
    send_and_check(&mut alice, &mut [&mut bob], &gid, &pins, "the real one");
}

#[test]
fn a_commit_adding_an_unbound_member_is_refused_by_the_others() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let _carol = Device::new("carol", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);
    let epoch = bob.c().epoch(&gid).unwrap();

    // alice was fooled into pinning mallory's key for "carol" and adds her; bob checks himself.
    let mut fake_carol = Device::with_identity("carol", IdentityKeyPair::generate(&mut OsRng));
    let mut fooled = pins.clone();
    fooled
        .0
        .insert(cid("carol"), fake_carol.identity.public_key());
    let kp = fake_carol.key_package_for(&mut alice, &fooled);
    let out = alice.c().add_members(&gid, &[kp]).unwrap();
    assert!(matches!(
        bob.c().process(&out.commit, &pins),
        Err(MlsError::IdentityBinding { client_id, .. }) if client_id == "carol"
    ));
    bob.reopen();
    assert_eq!(
        bob.c().epoch(&gid).unwrap(),
        epoch,
        "nothing of the refused Commit was kept"
    );
    // With the key bob pinned matching, the same Commit is accepted.
    assert!(bob.c().process(&out.commit, &fooled).is_ok());
}

#[test]
fn a_commit_from_a_non_member_is_refused() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);
    let epoch = bob.c().epoch(&gid).unwrap();

    // mallory builds her own group under the victim's group id and reaches its epoch.
    let provider = openmls_libcrux_crypto::Provider::new().unwrap();
    let mallory = IdentityKeyPair::generate(&mut OsRng);
    let mls_key = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    mls_key.store(provider.storage()).unwrap();
    let credential = forged_credential("mallory", &mallory, &mallory, &mls_key);
    let mut fake = MlsGroup::builder()
        .with_group_id(openmls::prelude::GroupId::from_slice(gid.as_bytes()))
        .ciphersuite(CIPHERSUITE)
        .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .with_capabilities(capabilities())
        .build(&provider, &mls_key, credential)
        .unwrap();
    while fake.epoch().as_u64() < epoch {
        fake.self_update(&provider, &mls_key, LeafNodeParameters::default())
            .unwrap();
        fake.merge_pending_commit(&provider).unwrap();
    }
    let bundle = fake
        .self_update(&provider, &mls_key, LeafNodeParameters::default())
        .unwrap();
    let commit = bundle.commit().to_bytes().unwrap();
    assert_eq!(lattice_mls::MlsClient::message_group(&commit).unwrap(), gid);
    assert!(matches!(
        bob.c().process(&commit, &pins),
        Err(MlsError::Handshake(_))
    ));
    assert_eq!(bob.c().epoch(&gid).unwrap(), epoch);
    // An application message from her does not open either; the group carries on.
    let ct = fake.create_message(&provider, &mls_key, b"hi").unwrap();
    assert!(matches!(
        bob.c().process(&ct.to_bytes().unwrap(), &pins),
        Err(MlsError::Decrypt)
    ));
    send_and_check(&mut alice, &mut [&mut bob], &gid, &pins, "unbothered");
    // A message for a group bob is not in is refused as such.
    let other: GroupId = alice.c().create_group("other").unwrap();
    let ct = alice.c().encrypt(&other, b"x").unwrap();
    assert!(matches!(bob.c().process(&ct, &pins), Err(MlsError::UnknownGroup(g)) if g == other));
}

#[test]
fn replayed_reordered_and_dropped_handshakes_are_detected() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);
    let e = bob.c().epoch(&gid).unwrap();

    let c1 = alice.c().self_update(&gid).unwrap();
    alice.c().confirm_commit(&gid).unwrap();
    let c2 = alice.c().rename(&gid, "second").unwrap();
    alice.c().confirm_commit(&gid).unwrap();
    let m3 = alice.c().encrypt(&gid, b"in epoch e+2").unwrap();

    // Reordered: the second Commit first is a missing-Commit error, and changes nothing.
    assert!(matches!(
        bob.c().process(&c2.commit, &pins),
        Err(MlsError::FutureEpoch { got, current }) if got == e + 1 && current == e
    ));
    // Dropped: a message of a later epoch says the same.
    assert!(matches!(
        bob.c().process(&m3, &pins),
        Err(MlsError::FutureEpoch { got, current }) if got == e + 2 && current == e
    ));
    // In order, everything applies.
    bob.c().process(&c1.commit, &pins).unwrap();
    // Replayed: the same Commit again is stale.
    assert!(matches!(
        bob.c().process(&c1.commit, &pins),
        Err(MlsError::StaleEpoch { got, current }) if got == e && current == e + 1
    ));
    bob.c().process(&c2.commit, &pins).unwrap();
    assert_eq!(
        texts(&bob.c().process(&m3, &pins).unwrap()),
        vec!["in epoch e+2"]
    );
    // A replayed application message does not open twice.
    assert!(matches!(
        bob.c().process(&m3, &pins),
        Err(MlsError::Decrypt)
    ));
    assert_eq!(bob.c().group_name(&gid).unwrap(), "second");
}

#[test]
fn a_tampered_application_message_is_refused_and_the_original_still_opens() {
    let mut pins = Pins::default();
    let mut alice = Device::new("alice", &mut pins);
    let mut bob = Device::new("bob", &mut pins);
    let gid = make_group(&mut alice, &mut [&mut bob], &pins);

    let ct = alice.c().encrypt(&gid, b"pay 10").unwrap();
    // The AEAD tag and ciphertext body: one opaque decryption error, whatever was changed.
    for i in [ct.len() - 1, ct.len() - 20] {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        assert!(
            matches!(bob.c().process(&bad, &pins), Err(MlsError::Decrypt)),
            "flipped byte {i} was not refused as undecryptable"
        );
    }
    assert_eq!(texts(&bob.c().process(&ct, &pins).unwrap()), vec!["pay 10"]);
    let out = bob.c().self_update(&gid).unwrap();
    commit_everywhere(&mut bob, &out, &mut [&mut alice], &pins);
}
