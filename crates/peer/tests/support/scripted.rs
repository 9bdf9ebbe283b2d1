//! Helpers of the scripted-server tests (`tests/fake_*.rs`): a peer connected to the
//! [`FakeServer`], key fetches and acceptances it answers, and hand-made messages (sealed and
//! signed as a sender would, or not) that a real server would never relay.

use base64::Engine as _;
use lattice_crypto::{
    lattice_v1, message_signature_payload, ml_kem_aes, Fingerprint, Identity, KemPublicKey,
};
use lattice_peer::{
    ConnectionState, MessagingPeer, PeerConfig, PeerError, PeerEvent, RejectReason, WaitOptions,
};
use lattice_protocol::{ClientFrame, ServerFrame};
use serde_json::{json, Value};

use super::fake::{error_frame, FakeConn, FakeServer, B64};
use super::{id, new_identity, none_before, test_config, wait_for};

pub async fn connected(fake: &mut FakeServer, cfg: PeerConfig) -> (MessagingPeer, FakeConn) {
    let peer = MessagingPeer::new(cfg).unwrap();
    let p = peer.clone();
    let task = tokio::spawn(async move { p.connect().await });
    let mut conn = fake.next_conn().await;
    conn.accept_registration().await;
    task.await.unwrap().unwrap();
    (peer, conn)
}

/// Alice connected to a fresh fake server: the server (keep it alive), the peer, its connection
/// as the server sees it, her event stream, and her KEM key (to seal messages to her).
pub async fn alice() -> (
    FakeServer,
    MessagingPeer,
    FakeConn,
    lattice_peer::EventStream,
    KemPublicKey,
) {
    let mut fake = FakeServer::start().await;
    let cfg = test_config(&fake.url, "alice", new_identity());
    let kem = cfg
        .credentials
        .identity()
        .expect("a primary")
        .kem_public_key()
        .clone();
    let (peer, conn) = connected(&mut fake, cfg).await;
    let events = peer.events();
    (fake, peer, conn, events, kem)
}

/// `peer` asks for `name`'s key while the fake server answers with `identity`'s.
pub async fn fetch_key(
    peer: &MessagingPeer,
    conn: &mut FakeConn,
    name: &str,
    identity: &Identity,
) -> Result<lattice_peer::keys::PeerKey, PeerError> {
    let p = peer.clone();
    let target = id(name);
    let fetch = tokio::spawn(async move { p.request_public_key(&target).await });
    conn.serve_key(name, identity).await;
    fetch.await.unwrap()
}

/// `peer` accepts `name`'s key change with fingerprint `compared` while the fake server answers
/// the key request with `serving`'s keys.
pub async fn accept(
    peer: &MessagingPeer,
    conn: &mut FakeConn,
    name: &str,
    compared: &Fingerprint,
    serving: &Identity,
) -> Result<(), PeerError> {
    let p = peer.clone();
    let target = id(name);
    let fp = compared.clone();
    let task = tokio::spawn(async move { p.accept_key_change(&target, &fp).await });
    conn.serve_key(name, serving).await;
    task.await.unwrap()
}

pub fn fp(identity: &Identity) -> Fingerprint {
    identity.identity_public_key().fingerprint()
}

pub fn discover(
    peer: &MessagingPeer,
    opts: WaitOptions,
) -> tokio::task::JoinHandle<Result<ServerFrame, PeerError>> {
    let p = peer.clone();
    tokio::spawn(async move {
        p.send_to_server_and_wait(ClientFrame::Discover(Default::default()), "discover", opts)
            .await
    })
}

pub fn peers_of(f: &ServerFrame) -> Vec<String> {
    match f {
        ServerFrame::Peers(p) => p.peers.iter().map(|p| p.to_string()).collect(),
        other => panic!("not a discover answer: {other:?}"),
    }
}

// ---- incoming message checks ----

pub struct Sender<'a> {
    pub id: &'a str,
    pub signer: &'a Identity,
}

pub fn v1_payload(
    from: &Sender<'_>,
    to: &str,
    to_kem: &KemPublicKey,
    mid: &str,
    inner_mid: &str,
    body: &str,
) -> Value {
    v1_payload_at(from, to, to_kem, mid, inner_mid, body, now_ms())
}

pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// [`v1_payload`] with a chosen signed `sentAt` (unix ms).
pub fn v1_payload_at(
    from: &Sender<'_>,
    to: &str,
    to_kem: &KemPublicKey,
    mid: &str,
    inner_mid: &str,
    body: &str,
    sent_at: u64,
) -> Value {
    let payload =
        message_signature_payload(from.id, to, inner_mid, sent_at, body.as_bytes()).unwrap();
    let sig = from.signer.identity_key().sign(&payload);
    let inner = json!({"v": 1, "kind": "text", "messageId": inner_mid, "body": body, "sentAt": sent_at, "sig": B64.encode(sig)});
    let ctx = lattice_v1::Context {
        sender_id: from.id,
        recipient_id: to,
        message_id: mid,
    };
    let sealed = lattice_v1::seal(
        &mut rand_core::OsRng,
        to_kem,
        &ctx,
        inner.to_string().as_bytes(),
    )
    .unwrap();
    json!({
        "message": {"algorithm": "lattice-v1", "serializedCipherText": B64.encode(&sealed.cipher_text), "serializedEncryptedData": B64.encode(&sealed.encrypted_data)},
        "fromId": from.id, "timestamp": 1, "messageId": mid,
    })
}

pub fn ml_kem_aes_payload(
    from: &str,
    to_kem: &KemPublicKey,
    mid: Option<&str>,
    text: &str,
) -> Value {
    let sealed = ml_kem_aes::seal(&mut rand_core::OsRng, to_kem, text.as_bytes()).unwrap();
    let mut v = json!({
        "message": {"algorithm": "ml-kem-aes", "serializedCipherText": B64.encode(&sealed.cipher_text), "serializedEncryptedData": B64.encode(&sealed.encrypted_data)},
        "fromId": from, "timestamp": 2,
    });
    if let Some(m) = mid {
        v["messageId"] = json!(m);
    }
    v
}

pub fn msg(payload: Value) -> Value {
    json!({"type": "message", "payload": payload})
}

pub async fn expect_rejected(events: &mut lattice_peer::EventStream, mid: &str) -> RejectReason {
    let mid = mid.to_owned();
    none_before(
        events,
        |e| matches!(e, PeerEvent::Message(m) if m.message_id.as_ref().is_some_and(|i| i.as_str() == mid)),
        |e| match e {
            PeerEvent::Error(PeerError::Rejected { message_id: Some(m), reason, .. }) if m.as_str() == mid => Some(reason.clone()),
            _ => None,
        },
    )
    .await
}

// ---- replaced by another connection of the same identity (close 4000) ----

pub const REPLACED: u16 = 4000;
pub const REPLACED_REASON: &str = "replaced by a newer connection of the same identity";

pub fn is_retry(e: &PeerEvent) -> bool {
    matches!(
        e,
        PeerEvent::ConnectionState(ConnectionState::Reconnecting { .. })
    )
}

// ---- which refused messages are acknowledged ----

/// Sends an unsigned message from an original client (no pinned identity) and waits until it is
/// delivered. Returns the id of the next `ack` the peer sends, which must be the marker's if
/// nothing before it was acked. Senders are processed concurrently, so call it only once what was
/// sent before has been reported (delivered or refused): then any ack of it would come first.
pub async fn next_ack_after_marker(
    conn: &mut FakeConn,
    events: &mut lattice_peer::EventStream,
    alice_kem: &KemPublicKey,
    marker: &str,
) -> String {
    conn.send(msg(ml_kem_aes_payload(
        "orig",
        alice_kem,
        Some(marker),
        "marker",
    )))
    .await;
    let m = wait_for(events, |e| match e {
        PeerEvent::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(m.message_id.as_ref().map(|i| i.as_str()), Some(marker));
    conn.expect("ack").await["payload"]["messageId"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `from` sends `text` as `mid`; the key request it causes fails (`INTERNAL_ERROR`), so the
/// message is held as `SenderKeyUnavailable`.
pub async fn held_for_an_unavailable_key(
    conn: &mut FakeConn,
    events: &mut lattice_peer::EventStream,
    from: &Sender<'_>,
    alice_kem: &KemPublicKey,
    mid: &str,
    text: &str,
) {
    conn.send(msg(v1_payload(from, "alice", alice_kem, mid, mid, text)))
        .await;
    let req = conn.expect("request_public_key").await;
    conn.send(error_frame("INTERNAL_ERROR", Some(&req["requestId"])))
        .await;
    assert!(matches!(
        expect_rejected(events, mid).await,
        RejectReason::SenderKeyUnavailable(_)
    ));
}
