//! Shared helpers for the server's integration tests: a real server on 127.0.0.1:0 and raw
//! WebSocket clients speaking JSON.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use lattice_crypto::Identity;
use lattice_server::{Config, ServerHandle};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How long a test waits for any expected frame before failing (never a timing assertion: only a
/// bound so a broken server fails the test instead of hanging it).
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn spawn_server() -> ServerHandle {
    spawn_with(Config::for_tests()).await
}

pub async fn spawn_with(config: Config) -> ServerHandle {
    if std::env::var_os("LATTICE_TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    lattice_server::spawn(config).await.expect("server starts")
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next read produced.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<CloseFrame>),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next JSON frame or close (skipping pings/pongs).
    pub async fn next(&mut self) -> Next {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait bound");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Next::Frame(serde_json::from_str(&t).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(c))) => return Next::Closed(c),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Next::Closed(None),
            }
        }
    }

    /// The next frame, which must be JSON.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Next::Frame(v) => v,
            Next::Closed(c) => panic!("connection closed: {c:?}"),
        }
    }

    /// The next frame of type `ty`, skipping presence notices.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
            let t = v["type"].as_str().unwrap_or_default();
            assert!(
                t == "peer_connected" || t == "peer_disconnected",
                "expected {ty}, got {v}"
            );
        }
    }

    /// The next `error` frame; returns its payload.
    /// The next frame of one of `types`, skipping others.
    pub async fn recv_any(&mut self, types: &[&str]) -> Value {
        loop {
            let v = self.recv().await;
            if types.iter().any(|t| v["type"] == *t) {
                return v;
            }
        }
    }

    pub async fn recv_error(&mut self) -> Value {
        self.recv_type("error").await["payload"].clone()
    }

    /// Waits for the server to close; returns the close frame.
    pub async fn recv_close(&mut self) -> Option<CloseFrame> {
        loop {
            if let Next::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    pub async fn request(&mut self, v: Value, ty: &str) -> Value {
        self.send(v).await;
        self.recv_type(ty).await
    }
}

pub fn kem_key(identity: &Identity) -> Vec<u8> {
    identity.kem_public_key().as_bytes().to_vec()
}

pub fn new_identity() -> Identity {
    Identity::generate(&mut rand::rngs::OsRng)
}

/// A client registered unverified (original style: ml-dsa verification object).
pub async fn register_unverified(url: &str, id: &str) -> (Client, Identity) {
    let identity = new_identity();
    let mut c = Client::connect(url).await;
    c.send(json!({"type":"register","payload":{"clientId":id,"publicKey":kem_key(&identity),
        "verification":{"algorithm":"ml-dsa","serializedPublicKey":"AA==","serializedMessage":"AA==","serializedSignedData":"AA=="}}}))
        .await;
    let r = c.recv_type("register").await;
    assert_eq!(
        r["payload"],
        json!({"success": true, "clientId": id, "verified": false}),
        "{r}"
    );
    (c, identity)
}

/// The `register` frame for a verified registration with `nonce`.
pub fn verified_register(identity: &Identity, id: &str, nonce: &[u8]) -> Value {
    let kem = kem_key(identity);
    let statement = lattice_crypto::registration_statement(nonce, id, &kem).unwrap();
    let sig = identity.identity_key().sign(&statement);
    json!({"type":"register","payload":{
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

pub async fn challenge(c: &mut Client) -> Vec<u8> {
    let ch = c
        .request(json!({"type":"challenge","payload":{}}), "challenge")
        .await;
    B64.decode(ch["payload"]["nonce"].as_str().unwrap())
        .unwrap()
}

/// Connects and registers `id` verified with `identity`; returns the client and the answer frame.
pub async fn try_register_verified(url: &str, id: &str, identity: &Identity) -> (Client, Value) {
    let mut c = Client::connect(url).await;
    let nonce = challenge(&mut c).await;
    c.send(verified_register(identity, id, &nonce)).await;
    let v = c.recv().await;
    (c, v)
}

/// Registers `id` verified again after a drop. The server may not have noticed the old connection
/// close yet; a verified registration replaces it, so this normally succeeds at once. Bounded.
pub async fn reconnect_verified(url: &str, id: &str, identity: &Identity) -> Client {
    for _ in 0..50 {
        let (c, v) = try_register_verified(url, id, identity).await;
        if v["type"] == "register" {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id} could not register again");
}

pub async fn register_verified(url: &str, id: &str, identity: &Identity) -> Client {
    let (c, v) = try_register_verified(url, id, identity).await;
    assert_eq!(
        v["payload"],
        json!({"success": true, "clientId": id, "verified": true}),
        "{v}"
    );
    c
}

/// A plausible envelope (the server never opens it).
pub fn envelope(tag: &str) -> Value {
    json!({"algorithm":"lattice-v1","serializedCipherText":B64.encode(tag),"serializedEncryptedData":B64.encode(format!("data-{tag}"))})
}

pub async fn admin_ask(base: &str, token: &str, peer: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/peers/{peer}/questions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("admin JSON"))
}

/// A register frame for `id` with an already-encoded ML-KEM key (unverified, original style).
pub fn unverified_register(id: &str, key: &Value) -> Value {
    json!({"type":"register","payload":{"clientId":id,"publicKey":key,
        "verification":{"algorithm":"ml-dsa","serializedPublicKey":"AA==","serializedMessage":"AA==","serializedSignedData":"AA=="}}})
}

/// Reads until a `message_ack` or `error` answering `rid`, skipping presence.
pub async fn answer_to(c: &mut Client, rid: &str) -> Value {
    loop {
        let v = c.recv().await;
        if v["requestId"] == rid {
            return v;
        }
        let t = v["type"].as_str().unwrap_or_default();
        assert!(
            t == "peer_connected" || t == "peer_disconnected" || t == "message",
            "unexpected {v}"
        );
    }
}
