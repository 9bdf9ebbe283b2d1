//! Id ownership: verified bindings, unverified registrations, reclaiming from a stale connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use serde_json::json;
use support::*;

#[tokio::test]
async fn unverified_ids_are_taken_while_online_only() {
    let server = spawn_server().await;
    let url = server.url();
    let (first, _) = register_unverified(&url, "carol").await;
    let mut second = Client::connect(&url).await;
    second.send(json!({"type":"register","payload":{"clientId":"carol","publicKey":kem_key(&new_identity())}})).await;
    let e = second.recv_error().await;
    assert_eq!(e["errorType"], "CLIENT_ID_TAKEN");
    assert_eq!(e["details"], "Client ID carol is already taken");
    drop(first);
    // once the first connection is gone (the server notices the close), the id is free again
    let mut ok = false;
    for _ in 0..50 {
        let mut c = Client::connect(&url).await;
        c.send(json!({"type":"register","payload":{"clientId":"carol","publicKey":kem_key(&new_identity())}})).await;
        if c.recv().await["type"] == "register" {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the id was released after its connection closed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_bound_id_cannot_be_taken_and_its_owner_reclaims_it_at_once() {
    let server = spawn_server().await;
    let url = server.url();
    let owner = new_identity();
    let mut stale = register_verified(&url, "dave", &owner).await;

    // an unverified client cannot take it (online or not)
    let mut thief = Client::connect(&url).await;
    thief.send(json!({"type":"register","payload":{"clientId":"dave","publicKey":kem_key(&new_identity())}})).await;
    assert_eq!(thief.recv_error().await["errorType"], "CLIENT_ID_TAKEN");
    // nor a verified client with another identity key
    let (mut other, v) = try_register_verified(&url, "dave", &new_identity()).await;
    assert_eq!(v["payload"]["errorType"], "CLIENT_ID_TAKEN", "{v}");
    // a wrong proof is INVALID_PROOF, not a takeover
    let mut forger = Client::connect(&url).await;
    let nonce = challenge(&mut forger).await;
    let mut frame = verified_register(&owner, "dave", &nonce);
    frame["payload"]["verification"]["serializedPublicKey"] =
        json!(B64.encode(new_identity().identity_public_key().as_bytes()));
    forger.send(frame).await;
    assert_eq!(forger.recv_error().await["errorType"], "INVALID_PROOF");
    // replaying the owner's statement on a new connection fails: the nonce is per challenge
    let mut replayer = Client::connect(&url).await;
    let _fresh = challenge(&mut replayer).await;
    replayer
        .send(verified_register(&owner, "dave", &nonce))
        .await;
    let e = replayer.recv_error().await;
    assert_eq!(e["errorType"], "INVALID_PROOF");
    // no challenge at all
    let mut lazy = Client::connect(&url).await;
    lazy.send(verified_register(&owner, "dave", &nonce)).await;
    assert_eq!(lazy.recv_error().await["errorType"], "INVALID_PROOF");

    // the owner, on a new connection, replaces the stale one immediately
    let mut fresh = register_verified(&url, "dave", &owner).await;
    let close = stale.recv_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 4000);
    let d = fresh
        .request(json!({"type":"discover","payload":{}}), "discover")
        .await;
    assert_eq!(d["payload"]["peers"], json!(["dave"]));

    // after everyone leaves, the binding still holds
    drop(fresh);
    let _ = other.ws.close(None).await;
    let mut later = Client::connect(&url).await;
    later.send(json!({"type":"register","payload":{"clientId":"dave","publicKey":kem_key(&new_identity())}})).await;
    assert_eq!(later.recv_error().await["errorType"], "CLIENT_ID_TAKEN");
    server.shutdown().await;
}

#[tokio::test]
async fn a_key_signature_over_another_kem_key_is_refused() {
    let server = spawn_server().await;
    let me = new_identity();
    let mut c = Client::connect(&server.url()).await;
    let nonce = challenge(&mut c).await;
    let mut frame = verified_register(&me, "erin", &nonce);
    // swap in another KEM key signed by nobody: statement no longer matches either
    let other = new_identity();
    frame["payload"]["keySignature"] = json!(B64.encode(other.key_signature()));
    c.send(frame).await;
    let e = c.recv_error().await;
    assert_eq!(e["errorType"], "INVALID_PROOF");
    assert!(e["details"].as_str().unwrap().contains("keySignature"));
    server.shutdown().await;
}

#[tokio::test]
async fn racing_registrations_of_one_id_have_one_winner() {
    let server = spawn_server().await;
    let url = server.url();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.send(json!({"type":"register","payload":{"clientId":"race","publicKey":kem_key(&new_identity())}})).await;
            let v = c.recv().await;
            (v["type"] == "register", c)
        }));
    }
    let mut winners = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (won, c) = t.await.unwrap();
        winners += usize::from(won);
        keep.push(c);
    }
    assert_eq!(winners, 1);
    server.shutdown().await;
}
