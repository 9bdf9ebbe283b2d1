//! A raw WebSocket client speaking JSON frames, for tests that play an original client (one
//! registered without an identity key) or send what no `MessagingPeer` would.

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::EVENT_WAIT;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct RawClient {
    ws: Ws,
}

impl RawClient {
    /// Connects and registers `id` unverified with `kem_public_key` (bytes, as original clients
    /// send them); asserts the server says `verified: false`.
    pub async fn register_unverified(url: &str, id: &str, kem_public_key: &[u8]) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut c = Self { ws };
        c.send(
            json!({"type": "register", "payload": {"clientId": id, "publicKey": kem_public_key}}),
        )
        .await;
        let r = c.recv_type("register").await;
        assert_eq!(r["payload"]["verified"], false, "{r}");
        c
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: serde_json::Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame of type `ty` (others are skipped), within [`EVENT_WAIT`].
    pub async fn recv_type(&mut self, ty: &str) -> serde_json::Value {
        loop {
            let msg = tokio::time::timeout(EVENT_WAIT, self.ws.next())
                .await
                .expect("no frame in time")
                .expect("closed")
                .expect("read error");
            if let Message::Text(t) = msg {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
        }
    }
}
