//! The handlers without a socket: a [`Core`] per connection over a real in-memory store and hub,
//! driven with text frames; replies are read after the batch's group commit, as the socket loop
//! writes them. Frames other sessions route to a connection are read from its queue.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use base64::Engine as _;
use futures_util::FutureExt as _;
use lattice_crypto::Identity;
use lattice_protocol::close_code;
use lattice_protocol::limits::CHALLENGE_TTL_SECS;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Close, Core};
use crate::hub::{Out, SessionShared};
use crate::limits::{INVALID_WINDOW, MAX_INVALID_FRAMES, MAX_OPEN_DEMOS_PER_PEER};
use crate::state::ServerState;
use crate::Config;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn server(config: Config) -> Arc<ServerState> {
    crate::build_state(config, CancellationToken::new()).expect("in-memory state")
}

/// Runs a handler future to its end. On the single-node store and hub nothing a handler does
/// waits, so it is ready at its first poll; a handler that suspended here would be a new wait on
/// the single-node path.
#[track_caller]
fn now<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never()
        .expect("the single-node handlers never wait")
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// One connection: its core and the receiving end of its outbound queue.
struct Conn {
    core: Core,
    rx: mpsc::Receiver<Out>,
}

impl Conn {
    fn open(state: &Arc<ServerState>) -> Self {
        Self::open_from(state, loopback())
    }

    fn open_from(state: &Arc<ServerState>, ip: IpAddr) -> Self {
        let conn_id = state.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(state.config.outbound_queue);
        let shared = Arc::new(SessionShared::new(
            conn_id,
            tx,
            state.shutdown.child_token(),
            state.uptime_ms(),
        ));
        Self {
            core: Core::new(Arc::clone(state), shared, ip),
            rx,
        }
    }

    /// Handles one frame; the batch's replies after its group commit.
    fn send(&mut self, v: &Value) -> Vec<Value> {
        self.send_text(&v.to_string())
    }

    fn send_text(&mut self, text: &str) -> Vec<Value> {
        assert_eq!(
            now(self.core.on_text(text)),
            None,
            "the connection must stay open"
        );
        self.flush()
    }

    /// The one reply to `v`.
    fn one(&mut self, v: &Value) -> Value {
        let replies = self.send(v);
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.into_iter().next().unwrap_or_default()
    }

    fn flush(&mut self) -> Vec<Value> {
        self.core.commit_pending();
        self.core
            .take_replies()
            .into_iter()
            .map(|m| match m {
                Message::Text(t) => serde_json::from_str(&t).expect("the server writes JSON"),
                other => panic!("not a text frame: {other:?}"),
            })
            .collect()
    }

    /// Frames other connections routed to this one.
    fn routed(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Ok(out) = self.rx.try_recv() {
            if let Out::Deliver(t) | Out::Frame(t) = out {
                frames.push(serde_json::from_str(&t).expect("JSON"));
            }
        }
        frames
    }

    fn challenge(&mut self) -> Vec<u8> {
        let c = self.one(&json!({"type":"challenge","payload":{}}));
        B64.decode(c["payload"]["nonce"].as_str().unwrap_or_default())
            .expect("base64 nonce")
    }
}

fn kem_key(identity: &Identity) -> Vec<u8> {
    identity.kem_public_key().as_bytes().to_vec()
}

fn unverified_register(id: &str, identity: &Identity) -> Value {
    json!({"type":"register","requestId":"reg","payload":{"clientId":id,"publicKey":kem_key(identity)}})
}

fn verified_register(identity: &Identity, id: &str, nonce: &[u8]) -> Value {
    let kem = kem_key(identity);
    let statement = lattice_crypto::registration_statement(nonce, id, &kem).expect("statement");
    let sig = identity.identity_key().sign(&statement);
    json!({"type":"register","requestId":"reg","payload":{
        "clientId": id,
        "publicKey": kem,
        "keySignature": B64.encode(identity.key_signature()),
        "verification": {
            "algorithm": "ed25519",
            "serializedPublicKey": B64.encode(identity.identity_public_key().as_bytes()),
            "serializedMessage": B64.encode(&statement),
            "serializedSignedData": B64.encode(sig),
        }
    }})
}

fn new_identity() -> Identity {
    Identity::generate(&mut rand::rngs::OsRng)
}

fn registered(state: &Arc<ServerState>, id: &str) -> Conn {
    let mut c = Conn::open(state);
    let r = c.one(&unverified_register(id, &new_identity()));
    assert_eq!(
        r["payload"],
        json!({"success":true,"clientId":id,"verified":false})
    );
    c
}

fn registered_verified(state: &Arc<ServerState>, id: &str, identity: &Identity) -> Conn {
    let mut c = Conn::open(state);
    let nonce = c.challenge();
    let r = c.one(&verified_register(identity, id, &nonce));
    assert_eq!(
        r["payload"],
        json!({"success":true,"clientId":id,"verified":true}),
        "{r}"
    );
    c
}

/// `v` is an `error` frame of `error_type` answering request `rid`.
#[track_caller]
fn assert_error(v: &Value, error_type: &str, rid: Option<&str>) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["payload"]["errorType"], error_type, "{v}");
    assert_eq!(v["requestId"].as_str(), rid, "{v}");
}

fn message(to: &str, mid: &str, rid: &str) -> Value {
    json!({"type":"message","requestId":rid,"payload":{"targetId":to,"messageId":mid,
        "message":{"algorithm":"lattice-v1","serializedCipherText":"AA==","serializedEncryptedData":"AA=="}}})
}

// ---- dispatch and invalid frames ----

#[test]
fn frames_before_registration_are_refused_with_their_request_id() {
    let state = server(Config::for_tests());
    let mut c = Conn::open(&state);
    for (ty, payload) in [
        ("discover", json!({})),
        ("request_public_key", json!({"targetId":"bob"})),
        ("debug_question", json!({})),
    ] {
        let r = c.one(&json!({"type":ty,"requestId":"q1","payload":payload}));
        assert_error(&r, "REGISTRATION_REQUIRED", Some("q1"));
        assert!(
            r["payload"]["details"]
                .as_str()
                .unwrap_or_default()
                .contains(ty),
            "{r}"
        );
    }
}

#[test]
fn a_malformed_frame_is_answered_with_the_request_id_it_carried() {
    let state = server(Config::for_tests());
    let mut c = Conn::open(&state);
    let r = c.one(&json!({"type":"no_such_frame","requestId":"x7","payload":{}}));
    assert_error(&r, "INVALID_MESSAGE", Some("x7"));
    let replies = c.send_text("{not json");
    assert_error(&replies[0], "INVALID_MESSAGE", None);
    assert_eq!(
        now(c.core.on_ws_message(Message::Binary(vec![1, 2].into()))),
        None
    );
    assert_error(&c.flush()[0], "INVALID_MESSAGE", None);
}

/// The invalid-frame limit on tokio's paused clock: past `MAX_INVALID_FRAMES` within the window
/// the connection closes with 1008; after a quiet window the count starts over.
#[tokio::test(start_paused = true)]
async fn too_many_invalid_frames_close_the_connection_but_the_window_forgets() {
    let state = server(Config::for_tests());
    let mut c = Conn::open(&state);
    for _ in 0..MAX_INVALID_FRAMES {
        assert_eq!(now(c.core.on_text("nope")), None);
    }
    tokio::time::advance(INVALID_WINDOW + Duration::from_secs(1)).await;
    for _ in 0..MAX_INVALID_FRAMES {
        assert_eq!(now(c.core.on_text("nope")), None, "a new window");
    }
    assert_eq!(
        now(c.core.on_text("nope")),
        Some(Close {
            code: close_code::POLICY,
            reason: "too many invalid frames"
        })
    );
    // Refusals of well-formed frames are not invalid frames.
    let mut d = Conn::open(&state);
    for _ in 0..=MAX_INVALID_FRAMES {
        assert_eq!(
            now(d.core.on_text(r#"{"type":"discover","payload":{}}"#)),
            None
        );
    }
}

// ---- register ----

#[test]
fn a_public_key_of_the_wrong_size_is_refused() {
    let state = server(Config::for_tests());
    let mut c = Conn::open(&state);
    let r = c.one(&json!({"type":"register","requestId":"k","payload":{"clientId":"alice","publicKey":[1,2,3]}}));
    assert_error(&r, "INVALID_PUBLIC_KEY", Some("k"));
    assert!(
        r["payload"]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("got 3 bytes"),
        "{r}"
    );
    // an out-of-range coefficient: the right length, not a key
    let r = c.one(&json!({"type":"register","requestId":"k2","payload":{"clientId":"alice","publicKey":vec![0xffu8; 1184]}}));
    assert_error(&r, "INVALID_PUBLIC_KEY", Some("k2"));
    assert!(state.hub.get(&"alice".try_into().unwrap()).is_none());
}

#[test]
fn a_verified_registration_needs_this_connections_challenge_and_a_matching_statement() {
    let state = server(Config::for_tests());
    let identity = new_identity();
    let mut c = Conn::open(&state);
    let r = c.one(&verified_register(&identity, "alice", &[7; 32]));
    assert_error(&r, "INVALID_PROOF", Some("reg"));
    assert!(
        r["payload"]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("challenge"),
        "{r}"
    );
    // signed for another id: the statement does not match
    let nonce = c.challenge();
    let mut frame = verified_register(&identity, "mallory", &nonce);
    frame["payload"]["clientId"] = json!("alice");
    assert_error(&c.one(&frame), "INVALID_PROOF", Some("reg"));
    // the challenge was used up by the failed attempt
    assert_error(
        &c.one(&verified_register(&identity, "alice", &nonce)),
        "INVALID_PROOF",
        Some("reg"),
    );
    let nonce = c.challenge();
    let r = c.one(&verified_register(&identity, "alice", &nonce));
    assert_eq!(r["payload"]["verified"], true, "{r}");
    assert_eq!(r["requestId"], "reg");
}

/// The challenge's lifetime on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_challenge_expires_after_its_ttl() {
    let state = server(Config::for_tests());
    let identity = new_identity();
    let mut c = Conn::open(&state);
    let nonce = c.challenge();
    tokio::time::advance(Duration::from_secs(CHALLENGE_TTL_SECS + 1)).await;
    let r = c.one(&verified_register(&identity, "alice", &nonce));
    assert_error(&r, "INVALID_PROOF", Some("reg"));
    assert!(
        r["payload"]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{r}"
    );
    let nonce = c.challenge();
    tokio::time::advance(Duration::from_secs(CHALLENGE_TTL_SECS - 1)).await;
    assert_eq!(
        c.one(&verified_register(&identity, "alice", &nonce))["type"],
        "register"
    );
}

#[test]
fn an_id_is_held_by_one_connection_and_bound_to_one_identity() {
    let state = server(Config::for_tests());
    let mut alice = registered(&state, "alice");
    // a retry on the same connection is answered again; another id is refused
    assert_eq!(
        alice.one(&unverified_register("alice", &new_identity()))["type"],
        "register"
    );
    assert_error(
        &alice.one(&unverified_register("bob", &new_identity())),
        "INVALID_MESSAGE",
        Some("reg"),
    );
    // another connection cannot take an id that is online
    let mut other = Conn::open(&state);
    assert_error(
        &other.one(&unverified_register("alice", &new_identity())),
        "CLIENT_ID_TAKEN",
        Some("reg"),
    );
    // nor, unverified or with another key, an id bound to a verified identity (even offline)
    let carol_key = new_identity();
    let mut carol = registered_verified(&state, "carol", &carol_key);
    now(carol.core.finish());
    assert_error(
        &Conn::open(&state).one(&unverified_register("carol", &new_identity())),
        "CLIENT_ID_TAKEN",
        Some("reg"),
    );
    let mut thief = Conn::open(&state);
    let nonce = thief.challenge();
    assert_error(
        &thief.one(&verified_register(&new_identity(), "carol", &nonce)),
        "CLIENT_ID_TAKEN",
        Some("reg"),
    );
}

#[test]
fn the_same_identity_on_a_new_connection_replaces_the_old_one_with_4000() {
    let state = server(Config::for_tests());
    let identity = new_identity();
    let old = registered_verified(&state, "alice", &identity);
    let new = registered_verified(&state, "alice", &identity);
    assert!(old.core.shared().kill.is_cancelled());
    assert_eq!(
        old.core.shared().close_reason.get().map(|r| r.0),
        Some(close_code::REPLACED)
    );
    let holder = state
        .hub
        .get(&"alice".try_into().unwrap())
        .map(|e| e.session.conn_id);
    assert_eq!(holder, Some(new.core.shared().conn_id));
}

#[test]
fn registrations_per_address_are_capped_when_loopback_is_limited() {
    let state = server(Config {
        max_registrations_per_ip: 1,
        limit_loopback: true,
        ..Config::for_tests()
    });
    let mut a = Conn::open(&state);
    assert_eq!(
        a.one(&unverified_register("a", &new_identity()))["type"],
        "register"
    );
    let mut b = Conn::open(&state);
    assert_error(
        &b.one(&unverified_register("b", &new_identity())),
        "TOO_MANY_REGISTRATIONS",
        Some("reg"),
    );
    now(a.core.finish());
    assert_eq!(
        b.one(&unverified_register("b", &new_identity()))["type"],
        "register"
    );
}

// ---- discover (presence subscribe) ----

#[test]
fn discover_lists_online_peers_and_subscribes_to_presence() {
    let state = server(Config::for_tests());
    let mut alice = registered(&state, "alice");
    let _bob = registered(&state, "bob");
    let r = alice.one(&json!({"type":"discover","requestId":"d","payload":{}}));
    assert_eq!(r["requestId"], "d");
    let mut peers: Vec<&str> = r["payload"]["peers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    peers.sort_unstable();
    assert_eq!(peers, ["alice", "bob"]);
    assert_ne!(r["payload"]["more"], true, "one page");
    // subscribed: a newcomer's arrival is on alice's presence lane
    let _carol = registered(&state, "carol");
    let lane = alice.core.shared().take_presence_backlog();
    assert_eq!(lane.len(), 1);
    assert!(
        lane[0].contains(r#""peer_connected""#) && lane[0].contains("carol"),
        "{lane:?}"
    );
}

// ---- request_public_key ----

#[test]
fn a_key_comes_from_the_hub_or_the_directory_or_is_not_found() {
    let state = server(Config::for_tests());
    let mut alice = registered(&state, "alice");
    let bob = registered(&state, "bob");
    let r = alice
        .one(&json!({"type":"request_public_key","requestId":"k","payload":{"targetId":"bob"}}));
    assert_eq!(r["type"], "public_key_response", "{r}");
    assert_eq!(r["requestId"], "k");
    assert_eq!(r["payload"]["peerId"], "bob");
    drop(bob);
    // an offline verified identity: from the directory, with its identity key
    let carol_key = new_identity();
    let mut carol = registered_verified(&state, "carol", &carol_key);
    now(carol.core.finish());
    let r = alice
        .one(&json!({"type":"request_public_key","requestId":"k2","payload":{"targetId":"carol"}}));
    assert_eq!(
        r["payload"]["identityKey"],
        B64.encode(carol_key.identity_public_key().as_bytes()),
        "{r}"
    );
    let r = alice.one(
        &json!({"type":"request_public_key","requestId":"k3","payload":{"targetId":"nobody"}}),
    );
    assert_error(&r, "PEER_NOT_FOUND", Some("k3"));
}

// ---- message relay and ack ----

#[test]
fn a_message_to_an_online_unverified_peer_is_delivered_and_acknowledged() {
    let state = server(Config::for_tests());
    let mut alice = registered(&state, "alice");
    let mut bob = registered(&state, "bob");
    let ack = alice.one(&message("bob", "m1", "r1"));
    assert_eq!(ack["type"], "message_ack", "{ack}");
    assert_eq!(ack["requestId"], "r1");
    assert_eq!(ack["payload"]["status"], "delivered", "{ack}");
    let got = bob.routed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["payload"]["fromId"], "alice");
    assert_eq!(got[0]["payload"]["messageId"], "m1");
}

#[test]
fn a_message_that_cannot_be_relayed_is_refused_with_its_request_id() {
    let state = server(Config::for_tests());
    let mut alice = registered(&state, "alice");
    assert_error(
        &alice.one(&message("nobody", "m1", "r1")),
        "PEER_NOT_FOUND",
        Some("r1"),
    );
    let r = alice.one(&json!({"type":"message","requestId":"r2","payload":{"targetId":"alice","message":"plain text"}}));
    assert_error(&r, "INVALID_MESSAGE", Some("r2"));
}

/// The sender's answer lane as JSON frames.
fn answers(c: &Conn) -> Vec<Value> {
    c.core
        .shared()
        .answers
        .take()
        .iter()
        .map(|t| serde_json::from_str(t).expect("JSON"))
        .collect()
}

/// End-to-end `delivered` at the handler level: a message for an online verified recipient is
/// sent at once and answered only at the recipient's `ack`, without a mailbox row; an ack from
/// a third party completes nothing; what is unacknowledged when the recipient's connection ends
/// is committed to the mailbox and its sender hears `queued`.
#[test]
fn delivered_waits_for_the_recipients_ack_and_the_rest_is_spilled_when_it_leaves() {
    let state = server(Config::for_tests());
    let bob_id = crate::store::MailboxKey::primary(&"bob".try_into().unwrap());
    let mut alice = registered(&state, "alice");
    let mut bob = registered_verified(&state, "bob", &new_identity());
    let mut carol = registered_verified(&state, "carol", &new_identity());
    assert!(alice.send(&message("bob", "m1", "r1")).is_empty());
    assert!(alice.send(&message("bob", "m2", "r2")).is_empty());
    assert!(answers(&alice).is_empty(), "no answer before the ack");
    assert_eq!(bob.routed().len(), 2, "sent at once");
    assert_eq!(
        state.mailbox.count(&bob_id).unwrap(),
        0,
        "no disk on this path"
    );
    // carol acks bob's message in alice's name: nothing happens
    assert!(carol
        .send(&json!({"type":"ack","payload":{"messageId":"m1","fromId":"alice"}}))
        .is_empty());
    assert!(answers(&alice).is_empty(), "a forged ack completes nothing");
    // bob acks m1
    assert!(bob
        .send(&json!({"type":"ack","payload":{"messageId":"m1","fromId":"alice"}}))
        .is_empty());
    let a = answers(&alice);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["type"], "message_ack");
    assert_eq!(a[0]["requestId"], "r1");
    assert_eq!(a[0]["payload"]["status"], "delivered");
    assert_eq!(a[0]["payload"]["messageId"], "m1");
    // a second ack of the same message answers nothing twice
    bob.send(&json!({"type":"ack","payload":{"messageId":"m1","fromId":"alice"}}));
    assert!(answers(&alice).is_empty());
    // bob leaves with m2 unacknowledged: it is stored and alice hears `queued`
    now(bob.core.finish());
    let a = answers(&alice);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["requestId"], "r2");
    assert_eq!(a[0]["payload"]["status"], "queued");
    let stored = state.mailbox.claim(&bob_id, 999, 10).expect("mailbox");
    let mids: Vec<&str> = stored.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(mids, ["m2"]);
    assert_eq!(state.in_flight_budget.used(), 0, "every held byte is back");
    assert_eq!(alice.core.shared().answers.awaiting(), 0, "no answer owed");
}

/// The bounds: a recipient connection holds at most `IN_FLIGHT_PER_CONNECTION` messages for an
/// ack; the next takes the durable path (committed, answered at once). A resend of a held
/// message, and an ack without `fromId` that two senders' messages match, are handled without
/// answering anyone twice.
#[test]
fn past_the_in_flight_bound_messages_take_the_durable_path() {
    use crate::limits::IN_FLIGHT_PER_CONNECTION;
    let state = server(Config {
        outbound_queue: IN_FLIGHT_PER_CONNECTION * 2,
        ..Config::for_tests()
    });
    let bob_id = crate::store::MailboxKey::primary(&"bob".try_into().unwrap());
    let mut alice = registered(&state, "alice");
    let mut dave = registered(&state, "dave");
    let mut bob = registered_verified(&state, "bob", &new_identity());
    for i in 0..IN_FLIGHT_PER_CONNECTION {
        let (mid, rid) = (format!("m{i}"), format!("r{i}"));
        let replies = if i == 0 {
            dave.send(&message("bob", &mid, &rid))
        } else {
            alice.send(&message("bob", &mid, &rid))
        };
        assert!(replies.is_empty(), "held: {replies:?}");
    }
    let over = alice.send(&message("bob", "over", "r-over"));
    assert_eq!(over.len(), 1, "{over:?}");
    assert_eq!(over[0]["requestId"], "r-over");
    assert_eq!(over[0]["payload"]["status"], "delivered", "{over:?}");
    assert_eq!(state.mailbox.count(&bob_id).unwrap(), 1, "committed first");
    // alice resends a held message: not held twice; the durable path answers it
    let again = alice.send(&message("bob", "m1", "r1-again"));
    assert_eq!(again[0]["requestId"], "r1-again", "{again:?}");
    assert_eq!(bob.routed().len(), IN_FLIGHT_PER_CONNECTION + 2);
    // m0 (dave) and m0 would be ambiguous; make alice send another m0 after dave's is acked
    bob.send(&json!({"type":"ack","payload":{"messageId":"m0","fromId":"dave"}}));
    assert_eq!(answers(&dave)[0]["payload"]["status"], "delivered");
    let mut erin = registered(&state, "erin");
    assert!(erin.send(&message("bob", "m2", "e2")).is_empty());
    // `m2` is held from alice and from erin: an ack without fromId completes neither
    bob.send(&json!({"type":"ack","payload":{"messageId":"m2"}}));
    assert!(answers(&alice).is_empty());
    assert!(answers(&erin).is_empty());
    // without ambiguity it completes the one held message
    bob.send(&json!({"type":"ack","payload":{"messageId":"m3"}}));
    let a = answers(&alice);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["requestId"], "r3");
    assert_eq!(a[0]["payload"]["status"], "delivered");
}

/// With `--ack-wait 0` there is no end-to-end wait: for an online verified recipient the
/// sender's `message_ack` exists only after the batch's group commit, and the row is in the
/// mailbox then (the durable path every message takes when a bound is reached).
#[test]
fn without_an_ack_wait_the_ack_for_a_verified_recipient_waits_for_the_group_commit() {
    let state = server(Config {
        ack_wait: Duration::ZERO,
        ..Config::for_tests()
    });
    let mut alice = registered(&state, "alice");
    let mut bob = registered_verified(&state, "bob", &new_identity());
    assert_eq!(
        now(alice.core.on_text(&message("bob", "m1", "r1").to_string())),
        None
    );
    assert_eq!(
        now(alice.core.on_text(&message("bob", "m2", "r2").to_string())),
        None
    );
    assert!(
        alice.core.take_replies().is_empty(),
        "nothing is answered before the commit"
    );
    assert!(
        bob.routed().is_empty(),
        "nothing is delivered before the commit"
    );
    let acks = alice.flush();
    let rids: Vec<&str> = acks
        .iter()
        .filter_map(|a| a["requestId"].as_str())
        .collect();
    assert_eq!(rids, ["r1", "r2"]);
    assert!(
        acks.iter().all(|a| a["payload"]["status"] == "delivered"),
        "{acks:?}"
    );
    assert_eq!(bob.routed().len(), 2);
    // bob drops without acking: both come back from the mailbox on his next connection
    now(bob.core.finish());
    let bob_id = crate::store::MailboxKey::primary(&"bob".try_into().unwrap());
    let stored = state.mailbox.claim(&bob_id, 999, 10).expect("mailbox");
    assert_eq!(stored.len(), 2);
}

#[test]
fn an_ack_deletes_the_message_and_an_unacked_one_comes_back() {
    let state = server(Config::for_tests());
    let bob_key = new_identity();
    let mut bob = registered_verified(&state, "bob", &bob_key);
    now(bob.core.finish());
    let mut alice = registered(&state, "alice");
    for (mid, rid) in [("m1", "r1"), ("m2", "r2")] {
        let ack = alice.one(&message("bob", mid, rid));
        assert_eq!(ack["payload"]["status"], "queued", "{ack}");
    }
    let mut bob = registered_verified(&state, "bob", &bob_key);
    assert!(bob.core.draining());
    now(bob.core.drain_batch());
    let mail = bob.flush();
    assert_eq!(mail.len(), 2);
    assert!(!bob.core.draining(), "a short batch ends the drain");
    bob.send(&json!({"type":"ack","payload":{"messageId":"m1","fromId":"alice"}}));
    now(bob.core.finish());
    let mut bob = registered_verified(&state, "bob", &bob_key);
    now(bob.core.drain_batch());
    let again = bob.flush();
    let mids: Vec<&str> = again
        .iter()
        .filter_map(|m| m["payload"]["messageId"].as_str())
        .collect();
    assert_eq!(mids, ["m2"]);
}

#[test]
fn a_full_mailbox_refuses_with_the_senders_request_id() {
    let state = server(Config {
        mailbox_quota: 1,
        mailbox_sender_quota: 1,
        ..Config::for_tests()
    });
    let mut bob = registered_verified(&state, "bob", &new_identity());
    now(bob.core.finish());
    let mut alice = registered(&state, "alice");
    assert_eq!(
        alice.one(&message("bob", "m1", "r1"))["payload"]["status"],
        "queued"
    );
    let r = alice.one(&message("bob", "m2", "r2"));
    assert_error(&r, "MAILBOX_FULL", Some("r2"));
    assert!(
        r["payload"]["details"]
            .as_str()
            .unwrap_or_default()
            .contains("bob"),
        "{r}"
    );
}

// ---- questions ----

#[test]
fn an_answer_to_an_unknown_question_is_refused_and_demos_are_bounded() {
    let state = server(Config::for_tests());
    let mut alice = registered(&state, "alice");
    let r = alice.one(&json!({"type":"peer_response","requestId":"p","payload":{"questionId":"q-none","response":"hi"}}));
    assert_error(&r, "UNKNOWN_QUESTION", Some("p"));
    for _ in 0..MAX_OPEN_DEMOS_PER_PEER {
        let q = alice.one(&json!({"type":"debug_question","requestId":"dq","payload":{}}));
        assert_eq!(q["type"], "server_question", "{q}");
        assert_eq!(q["requestId"], "dq");
    }
    let r = alice.one(&json!({"type":"debug_question","requestId":"dq","payload":{}}));
    assert_error(&r, "RATE_LIMITED", Some("dq"));
}

/// The in-flight reaper on paused tokio time: an unacknowledged message is answered nothing
/// before `--ack-wait`, and `queued` (committed to the mailbox) within the wait and one reaper
/// period after it; an acknowledged one is never spilled.
#[tokio::test(start_paused = true)]
async fn the_reaper_spills_what_is_not_acked_within_the_wait() {
    use crate::limits::{ACK_WAIT, IN_FLIGHT_REAP_DIVISOR};
    let state = server(Config::for_tests());
    let bob_id = crate::store::MailboxKey::primary(&"bob".try_into().unwrap());
    let mut alice = registered(&state, "alice");
    let mut bob = registered_verified(&state, "bob", &new_identity());
    state.sessions.insert(Arc::clone(bob.core.shared()));
    let reaper = tokio::spawn(super::reap_in_flight(Arc::clone(&state)));
    let t0 = tokio::time::Instant::now();
    assert!(alice.send(&message("bob", "late", "r1")).is_empty());
    assert!(alice.send(&message("bob", "acked", "r2")).is_empty());
    bob.send(&json!({"type":"ack","payload":{"messageId":"acked","fromId":"alice"}}));
    assert_eq!(answers(&alice)[0]["requestId"], "r2");
    tokio::time::sleep_until(t0 + ACK_WAIT - Duration::from_millis(1)).await;
    assert!(answers(&alice).is_empty(), "nothing before the wait");
    assert_eq!(state.mailbox.count(&bob_id).unwrap(), 0);
    let period = ACK_WAIT / IN_FLIGHT_REAP_DIVISOR;
    tokio::time::sleep_until(t0 + ACK_WAIT + period).await;
    // the commit runs on the writer thread: wait for its answer (bounded, not timed)
    let mut got = Vec::new();
    for _ in 0..1000 {
        got = answers(&alice);
        if !got.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["requestId"], "r1");
    assert_eq!(got[0]["payload"]["status"], "queued");
    assert_eq!(state.mailbox.count(&bob_id).unwrap(), 1, "committed first");
    state.shutdown.cancel();
    reaper.await.expect("the reaper stops at shutdown");
}
