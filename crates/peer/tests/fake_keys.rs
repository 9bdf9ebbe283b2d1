//! The client against a scripted fake server: identity key changes, caught, reported and
//! accepted only for the compared fingerprint (also across a restart with a `FileKeyStore`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use base64::Engine as _;
use lattice_crypto::{lattice_v1, Identity};
use lattice_peer::{PeerError, PeerEvent, RejectReason};
use serde_json::{json, Value};
use support::fake::{error_frame, key_payload, FakeServer, B64};
use support::scripted::*;
use support::*;

#[tokio::test]
async fn a_changed_identity_key_is_caught_and_must_be_accepted() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob_old = new_identity();
    let bob_new = new_identity();

    // First use pins bob's key.
    let key = fetch_key(&peer, &mut conn, "bob", &bob_old).await.unwrap();
    assert_eq!(
        key.fingerprint(),
        Some(bob_old.identity_public_key().fingerprint())
    );
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        key.fingerprint()
    );

    // The server now presents another identity for bob.
    assert!(matches!(
        fetch_key(&peer, &mut conn, "bob", &bob_new).await,
        Err(PeerError::KeyChanged { .. })
    ));
    let (old, new) = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, old, new } if peer.as_str() == "bob" => Some((old, new)),
        _ => None,
    })
    .await;
    assert_eq!(old, bob_old.identity_public_key().fingerprint());
    assert_eq!(new, bob_new.identity_public_key().fingerprint());

    // Nothing is sent to bob, nor accepted from the new key, until the change is accepted.
    assert!(matches!(
        peer.send_message(&id("bob"), "hi").await,
        Err(PeerError::KeyChanged { .. })
    ));
    let from_new = v1_payload(
        &Sender {
            id: "bob",
            signer: &bob_new,
        },
        "alice",
        &alice_kem,
        "k-1",
        "k-1",
        "it's me",
    );
    conn.send(msg(from_new)).await;
    assert_eq!(
        expect_rejected(&mut events, "k-1").await,
        RejectReason::KeyChanged
    );

    // A forged key signature is refused outright.
    let p = peer.clone();
    let fetch = tokio::spawn(async move { p.request_public_key(&id("eve")).await });
    let req = conn.expect("request_public_key").await;
    let mut bad = key_payload("eve", &new_identity());
    bad["keySignature"] = json!(B64.encode([0u8; 64]));
    conn.send(
        json!({"type": "public_key_response", "payload": bad, "requestId": req["requestId"]}),
    )
    .await;
    assert!(matches!(
        fetch.await.unwrap(),
        Err(PeerError::InvalidKeySignature { .. })
    ));

    // Accepting the compared fingerprint pins the new key; sending works again (lattice-v1 to
    // the new key).
    accept(&peer, &mut conn, "bob", &fp(&bob_new), &bob_new)
        .await
        .unwrap();
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        Some(fp(&bob_new))
    );
    let p = peer.clone();
    // The key fetched at acceptance is the one used: no second fetch.
    let sent = p.send_message(&id("bob"), "welcome back").await.unwrap();
    assert_eq!(sent.algorithm, lattice_peer::Algorithm::LatticeV1);
    let frame = conn.expect("message").await;
    assert_eq!(frame["payload"]["targetId"], "bob");
    assert_eq!(frame["payload"]["messageId"], sent.message_id.as_str());
    assert_eq!(frame["requestId"], sent.message_id.as_str());
    // Bob can open it with the new key and the signature verifies with the new identity.
    let env = &frame["payload"]["message"];
    let sealed = lattice_crypto::SealedEnvelope {
        cipher_text: B64
            .decode(env["serializedCipherText"].as_str().unwrap())
            .unwrap(),
        encrypted_data: B64
            .decode(env["serializedEncryptedData"].as_str().unwrap())
            .unwrap(),
    };
    let ctx = lattice_v1::Context {
        sender_id: "alice",
        recipient_id: "bob",
        message_id: sent.message_id.as_str(),
    };
    let plain = lattice_v1::open(bob_new.kem(), &ctx, &sealed).unwrap();
    let inner: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(inner["body"], "welcome back");
    // The server's verdict on the message comes back as an event naming it.
    conn.send(error_frame(
        "PEER_NOT_FOUND",
        Some(&json!(sent.message_id.as_str())),
    ))
    .await;
    let failed = wait_for(&mut events, |e| match e {
        PeerEvent::MessageFailed { message_id, .. } => Some(message_id),
        _ => None,
    })
    .await;
    assert_eq!(failed, sent.message_id);
}

/// Attack: the server shows key K1 as bob's new key (the user compares its fingerprint), then
/// answers the acceptance with its own K2. Accepting fp(K1) then pins nothing; only while the
/// server serves K1 does accepting fp(K1) pin it. A second change within the run is reported,
/// never slipped in silently.
#[tokio::test]
async fn a_key_change_after_a_restart_is_caught_with_a_file_key_store() {
    let dir = tempfile::tempdir().unwrap();
    let pins = dir.path().join("alice.pins");
    let alice = new_identity();
    let bob_old = new_identity();
    let bob_new = new_identity();
    let mut fake = FakeServer::start().await;
    let url = fake.url.clone();
    let config = |identity: Identity| {
        let mut c = test_config(&url, "alice", identity);
        c.key_store = Arc::new(lattice_peer::FileKeyStore::open(&pins).unwrap());
        c
    };
    let bytes = alice.to_bytes();

    // First run: bob's key is pinned on first use, and alice talks to him.
    let (peer, mut conn) = connected(&mut fake, config(alice)).await;
    fetch_key(&peer, &mut conn, "bob", &bob_old).await.unwrap();
    peer.send_message(&id("bob"), "hi").await.unwrap();
    peer.disconnect().await;
    drop(peer);
    let text = std::fs::read_to_string(&pins).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("bob ") && l.ends_with(" contact")),
        "bob is kept as a contact: {text}"
    );

    // Restart: the server now hands out another key for bob.
    let alice = Identity::from_bytes(&bytes).unwrap();
    let (peer, mut conn) = connected(&mut fake, config(alice)).await;
    let mut events = peer.events();
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        Some(fp(&bob_old)),
        "the pin survived the restart"
    );
    assert!(matches!(
        fetch_key(&peer, &mut conn, "bob", &bob_new).await,
        Err(PeerError::KeyChanged { .. })
    ));
    let (old, new) = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, old, new } if peer.as_str() == "bob" => Some((old, new)),
        _ => None,
    })
    .await;
    assert_eq!((old, new), (fp(&bob_old), fp(&bob_new)));
    assert!(matches!(
        peer.send_message(&id("bob"), "secret").await,
        Err(PeerError::KeyChanged { .. })
    ));
    // Accepted only explicitly, and then kept across the next restart too.
    accept(&peer, &mut conn, "bob", &fp(&bob_new), &bob_new)
        .await
        .unwrap();
    drop(conn);
    peer.disconnect().await;
    let store = lattice_peer::FileKeyStore::open(&pins).unwrap();
    assert_eq!(
        lattice_peer::KeyStore::pinned(&store, &id("bob"))
            .unwrap()
            .map(|k| k.fingerprint()),
        Some(fp(&bob_new))
    );
}

#[tokio::test]
async fn a_key_change_is_accepted_only_for_the_compared_fingerprint() {
    let (_fake, peer, mut conn, mut events, alice_kem) = alice().await;
    let bob_old = new_identity();
    let k1 = new_identity();
    let k2 = new_identity();
    fetch_key(&peer, &mut conn, "bob", &bob_old).await.unwrap();

    // The server presents K1: the user is shown fp(K1).
    assert!(matches!(
        fetch_key(&peer, &mut conn, "bob", &k1).await,
        Err(PeerError::KeyChanged { .. })
    ));
    let shown = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, new, .. } if peer.as_str() == "bob" => Some(new),
        _ => None,
    })
    .await;
    assert_eq!(shown, fp(&k1));
    // A message from the new key waits.
    let held = msg(v1_payload(
        &Sender {
            id: "bob",
            signer: &k1,
        },
        "alice",
        &alice_kem,
        "a-1",
        "a-1",
        "from K1",
    ));
    conn.send(held).await;
    assert_eq!(
        expect_rejected(&mut events, "a-1").await,
        RejectReason::KeyChanged
    );

    // At acceptance the server answers with K2: refused, nothing pinned, and K2 is reported as a
    // change of its own.
    match accept(&peer, &mut conn, "bob", &fp(&k1), &k2).await {
        Err(PeerError::KeyMismatch {
            peer: p,
            expected,
            actual,
        }) => {
            assert_eq!(p.as_str(), "bob");
            assert_eq!(*expected, fp(&k1));
            assert_eq!(*actual, fp(&k2));
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    assert_eq!(
        peer.peer_fingerprint(&id("bob")).unwrap(),
        Some(fp(&bob_old)),
        "nothing was pinned"
    );
    let reported = wait_for(&mut events, |e| match e {
        PeerEvent::KeyChanged { peer, new, .. } if peer.as_str() == "bob" => Some(new),
        _ => None,
    })
    .await;
    assert_eq!(reported, fp(&k2));
    // Still nothing goes to bob.
    assert!(matches!(
        peer.send_message(&id("bob"), "hi").await,
        Err(PeerError::KeyChanged { .. })
    ));
    // Accepting the key the server serves without having compared it: the caller must pass the
    // fingerprint it compared, and fp(K1) does not fit K2 however often it is tried.
    assert!(matches!(
        accept(&peer, &mut conn, "bob", &fp(&k1), &k2).await,
        Err(PeerError::KeyMismatch { .. })
    ));

    // The server serves K1 again: accepting fp(K1) pins K1 and the held message opens.
    accept(&peer, &mut conn, "bob", &fp(&k1), &k1)
        .await
        .unwrap();
    assert_eq!(peer.peer_fingerprint(&id("bob")).unwrap(), Some(fp(&k1)));
    let m = wait_for(&mut events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!((m.text.as_str(), m.verified), ("from K1", true));
    assert_eq!(conn.expect("ack").await["payload"]["messageId"], "a-1");
}
