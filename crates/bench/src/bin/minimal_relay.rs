//! The baseline for `lattice-loadgen compare`: the least a relay can do. It parses only `type`,
//! `clientId` and `targetId`, keeps the envelope as a borrowed `RawValue`, and forwards it as an
//! original-shape `message` frame. No validation, limits, acks, presence, storage or metrics. It is
//! the ceiling lattice-server is measured against, not a server anyone should run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Peers = Arc<Mutex<HashMap<String, mpsc::Sender<Message>>>>;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(borrow)]
    payload: Payload<'a>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(rename = "clientId", default)]
    client_id: Option<&'a str>,
    #[serde(rename = "targetId", default)]
    target_id: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3006);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("minimal-relay listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let peers = Arc::clone(&peers);
        tokio::spawn(async move {
            let mut config = WebSocketConfig::default();
            config.read_buffer_size = 8 * 1024;
            // Frames gathered before a write, as lattice-server does: the writer feeds whatever
            // is queued and flushes once, so a burst costs one syscall, not one per frame.
            config.write_buffer_size = 8 * 1024;
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::channel::<Message>(256);
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    while let Ok(m) = rx.try_recv() {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            let mut me: Option<String> = None;
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
                    continue;
                };
                match (frame.ty, frame.payload) {
                    (
                        "register",
                        Payload {
                            client_id: Some(id),
                            ..
                        },
                    ) => {
                        if let Ok(mut p) = peers.lock() {
                            p.insert(id.to_owned(), tx.clone());
                        }
                        me = Some(id.to_owned());
                        let ok = format!(
                            r#"{{"type":"register","payload":{{"success":true,"clientId":"{id}"}}}}"#
                        );
                        let _ = tx.try_send(Message::Text(ok.into()));
                    }
                    (
                        "message",
                        Payload {
                            target_id: Some(t),
                            message: Some(m),
                            ..
                        },
                    ) => {
                        let target = peers.lock().ok().and_then(|p| p.get(t).cloned());
                        if let (Some(target), Some(from)) = (target, &me) {
                            let out = format!(
                                r#"{{"type":"message","payload":{{"message":{},"fromId":"{from}","timestamp":0}}}}"#,
                                m.get()
                            );
                            let _ = target.send(Message::Text(out.into())).await;
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(id), Ok(mut p)) = (me, peers.lock()) {
                p.remove(&id);
            }
            writer.abort();
        });
    }
}
