//! `lattice-chat` end to end against a malicious scripted server: the binary runs with its stdin
//! and stdout on pipes, the test types lines and reads what the user sees, while the fake server
//! (the one of lattice-peer's tests) reads what the client sends and writes whatever it wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // Shared with lattice-peer's tests, which use all of it.
#[path = "../../peer/tests/support/fake.rs"]
mod fake;
mod support;

use fake::{error_frame, FakeConn, FakeServer};
use lattice_crypto::Identity;
use serde_json::json;
use support::chat::Chat;

fn question(id: &str, text: &str, kind: &str, options: Option<Vec<&str>>) -> serde_json::Value {
    let mut q = json!({"text": text, "kind": kind});
    if let Some(o) = options {
        q["options"] = json!(o);
    }
    json!({"type": "server_question", "payload": {"questionId": id, "question": q}})
}

/// The frame after `frame`s of acks: what the client sent next.
async fn next_sent(conn: &mut FakeConn) -> serde_json::Value {
    loop {
        let v = conn.recv().await;
        // Acks, and the KeyPackage top-up the client sends by itself after each verified
        // registration (groups are on in the chat; this fake server leaves it unanswered).
        if v["type"] == "key_package_fetch" {
            // The chat tries MLS first for a 1:1 conversation: bob is an older client, with no
            // KeyPackage, so lattice-v1 it is.
            conn.send(error_frame("NO_KEY_PACKAGE", Some(&v["requestId"])))
                .await;
            continue;
        }
        // The device pass asks for our own id's device list (after registering, after a
        // conversation is set up): this server knows none.
        if v["type"] == "request_public_key" && v["payload"]["targetId"] == "alice" {
            conn.send(error_frame("PEER_NOT_FOUND", Some(&v["requestId"])))
                .await;
            continue;
        }
        if v["type"] != "ack" && v["type"] != "key_package_upload" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_server_cannot_capture_lines_misaddress_them_or_silence_the_chat() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let mut chat = Chat::spawn(&server.url, dir.path(), "alice", &[]);
    let mut conn = server.next_conn().await;
    conn.accept_registration().await;
    chat.until("type /help for commands").await;

    let bob = Identity::generate(&mut rand_core::OsRng);
    chat.type_line("/to bob").await;
    conn.serve_key("bob", &bob).await;
    let line = chat.until("talking to bob").await;
    assert!(line.contains("trusted on first use"), "{line}");

    // Finding 1 (and 4): a question whose text tries to erase itself and retitle the window. The
    // next plain line still goes to bob, never to the server as an answer.
    conn.send(question(
        "q1",
        "\x1b[1A\x1b[2Kname?\x1b]0;owned\x07",
        "text",
        None,
    ))
    .await;
    let asked = chat.until("?? server asks #1").await;
    assert!(!asked.contains('\x1b'), "{asked:?}");
    chat.type_line("SECRET-second-message").await;
    let sent = next_sent(&mut conn).await;
    assert_eq!(sent["type"], "message", "{sent}");
    assert_eq!(sent["payload"]["targetId"], "bob");
    assert!(
        !sent.to_string().contains("SECRET"),
        "sent in clear: {sent}"
    );
    chat.until("[you → bob] SECRET-second-message").await;
    // Only an explicit /answer answers, bound to the question's id.
    chat.type_line("/answer #1 alice").await;
    let answer = next_sent(&mut conn).await;
    assert_eq!(answer["type"], "peer_response", "{answer}");
    assert_eq!(answer["payload"]["questionId"], "q1");
    assert_eq!(answer["payload"]["response"], "alice");
    chat.until("[you → server] alice").await;

    // Finding 5: a choice without options is shown as unanswerable and can be dismissed; messages
    // still flow meanwhile.
    conn.send(question("q2", "pick", "choice", Some(vec![])))
        .await;
    chat.until("#2 cannot be answered").await;
    chat.type_line("/dismiss #2").await;
    chat.until("question #2 dismissed").await;

    // Finding 2: after a failed /to, nothing goes to the previous peer.
    chat.type_line("/to carol").await;
    let req = conn.expect("request_public_key").await;
    assert_eq!(req["payload"]["targetId"], "carol");
    conn.send(error_frame("PEER_NOT_FOUND", Some(&req["requestId"])))
        .await;
    chat.until("cannot talk to carol").await;
    chat.type_line("SECRET-meant-for-carol").await;
    chat.until("not sent: no peer picked").await;
    // The next frame the server sees is the one typed after it, not a message.
    chat.type_line("/ask").await;
    let next = next_sent(&mut conn).await;
    assert_eq!(next["type"], "debug_question", "{next}");

    // Back to bob: his key is the pinned one now.
    chat.type_line("/to bob").await;
    conn.serve_key("bob", &bob).await;
    let line = chat.until("talking to bob").await;
    assert!(line.contains("verified (pinned key)"), "{line}");

    // Finding 8: a 4000 close is loud, and what is typed afterwards is refused, not queued.
    conn.close(4000, "replaced\x1b[2J").await;
    chat.until("DISCONNECTED").await;
    chat.until("/reconnect").await;
    chat.type_line("after the close").await;
    chat.until("not sent: DISCONNECTED").await;
    chat.type_line("/reconnect").await;
    let mut conn = server.next_conn().await;
    conn.accept_registration().await;
    chat.until("connected again").await;
    // Nothing was queued: the first frame after the registration is the one typed next.
    chat.type_line("/ask").await;
    let next = next_sent(&mut conn).await;
    assert_eq!(next["type"], "debug_question", "{next}");

    // Finding 6: /quit leaves at once, even with nothing more on stdin.
    let (status, seen) = chat.quit_with_output().await;
    assert!(status.success(), "{status:?}");
    for line in &seen {
        assert!(!line.contains('\x1b'), "raw escape printed: {line:?}");
    }
    drop(conn);
}
