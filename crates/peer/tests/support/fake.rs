//! A scripted fake server on loopback: the test reads what the peer sends and writes whatever it
//! wants back, including frames a real server would never send (forged, replayed, tampered).

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use lattice_crypto::Identity;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Bound on every wait of the fake server, so a broken test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(10);

pub struct FakeServer {
    pub url: String,
    conns: mpsc::Receiver<FakeConn>,
    accept: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, conns) = mpsc::channel(8);
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    if tx
                        .send(FakeConn {
                            ws,
                            skipped: Vec::new(),
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        Self { url, conns, accept }
    }

    pub async fn next_conn(&mut self) -> FakeConn {
        tokio::time::timeout(STEP, self.conns.recv())
            .await
            .expect("no connection within the step timeout")
            .expect("listener closed")
    }
}

pub struct FakeConn {
    ws: WebSocketStream<TcpStream>,
    /// Frames skipped by `expect` (acks, other types), in order.
    pub skipped: Vec<Value>,
}

impl FakeConn {
    /// The next text frame, as JSON.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("no frame within the step timeout")
                .expect("connection closed")
                .expect("read error");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// The next frame of type `ty`; others are kept in `skipped`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
            self.skipped.push(v);
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends `text` as is (not necessarily JSON).
    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// Answers the registration handshake (challenge, register) as a Lattice server would.
    pub async fn accept_registration(&mut self) -> Value {
        let c = self.expect("challenge").await;
        self.send(json!({"type": "challenge", "payload": {"nonce": B64.encode([7u8; 32])}, "requestId": c["requestId"]}))
            .await;
        let r = self.expect("register").await;
        let id = r["payload"]["clientId"].clone();
        self.send(json!({"type": "register", "payload": {"success": true, "clientId": id, "verified": true}, "requestId": r["requestId"]}))
            .await;
        r
    }

    /// Answers the next `request_public_key` with `identity`'s keys for `id`.
    /// A key request for another id (a client with MLS asks for its own id's device list after
    /// registering) is answered `PEER_NOT_FOUND`, as this server knows no other identity.
    pub async fn serve_key(&mut self, id: &str, identity: &Identity) {
        let req = loop {
            let req = self.expect("request_public_key").await;
            if req["payload"]["targetId"] == id {
                break req;
            }
            self.send(error_frame("PEER_NOT_FOUND", Some(&req["requestId"])))
                .await;
        };
        self.send(json!({"type": "public_key_response", "payload": key_payload(id, identity), "requestId": req["requestId"]}))
            .await;
    }

    /// Waits until the peer closes the connection (Close frame, end of stream or error); frames
    /// read meanwhile are kept in `skipped`.
    pub async fn closed(&mut self) {
        loop {
            let msg = tokio::time::timeout(STEP, self.ws.next())
                .await
                .expect("the connection stayed open");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    self.skipped.push(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Closes the connection with `code` and `reason`, as the server does.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        // The peer may already be gone; a failed close is fine.
        let _ = self.ws.close(Some(frame)).await;
    }

    /// Stops reading: pings go unanswered.
    pub fn into_silent(self) -> WebSocketStream<TcpStream> {
        self.ws
    }
}

pub fn key_payload(id: &str, identity: &Identity) -> Value {
    json!({
        "peerId": id,
        "publicKey": identity.kem_public_key().as_bytes().to_vec(),
        "identityKey": B64.encode(identity.identity_public_key().as_bytes()),
        "keySignature": B64.encode(identity.key_signature()),
    })
}

pub fn error_frame(error_type: &str, request_id: Option<&Value>) -> Value {
    let mut v = json!({"type": "error", "payload": {"errorType": error_type, "details": "scripted", "timestamp": "2026-01-01T00:00:00.000Z"}});
    if let Some(r) = request_id {
        v["requestId"] = r.clone();
        v["payload"]["requestId"] = r.clone();
    }
    v
}
