//! Server questions: the multi-round demo and the admin API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lattice_server::Config;
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_demo_conversation_adapts_to_answers() {
    let server = spawn_server().await;
    let (mut c, _) = register_unverified(&server.url(), "quiz").await;
    let q1 = c
        .request(
            json!({"type":"debug_question","payload":{}}),
            "server_question",
        )
        .await;
    let p1 = &q1["payload"];
    assert_eq!(p1["round"], 1);
    assert_eq!(p1["question"]["kind"], "text");
    let conv = p1["conversationId"].clone();

    c.send(json!({"type":"peer_response","payload":{"questionId":p1["questionId"],"response":"Grace"}})).await;
    let q2 = c.recv_type("server_question").await;
    let p2 = &q2["payload"];
    assert_eq!(p2["round"], 2);
    assert_eq!(p2["conversationId"], conv);
    assert!(p2["question"]["text"].as_str().unwrap().contains("Grace"));
    assert_eq!(p2["question"]["kind"], "choice");

    // a wrong choice is refused and the question stays open
    c.send(
        json!({"type":"peer_response","payload":{"questionId":p2["questionId"],"response":"Cats"}}),
    )
    .await;
    assert_eq!(c.recv_error().await["errorType"], "INVALID_MESSAGE");
    c.send(json!({"type":"peer_response","payload":{"questionId":p2["questionId"],"response":"Post-quantum crypto"}})).await;
    let q3 = c.recv_type("server_question").await;
    assert_eq!(q3["payload"]["round"], 3);
    assert_eq!(q3["payload"]["question"]["options"][0], "ML-KEM-768");

    c.send(json!({"type":"peer_response","payload":{"questionId":q3["payload"]["questionId"],"response":"ML-KEM-768"}})).await;
    let q4 = c.recv_type("server_question").await;
    assert!(q4["payload"]["question"]["text"]
        .as_str()
        .unwrap()
        .starts_with("Correct"));
    assert_eq!(q4["payload"]["question"]["kind"], "confirm");
    c.send(json!({"type":"peer_response","payload":{"questionId":q4["payload"]["questionId"],"response":false}})).await;
    // the conversation ended: answering again is unknown
    c.send(json!({"type":"peer_response","payload":{"questionId":q4["payload"]["questionId"],"response":false}})).await;
    assert_eq!(c.recv_error().await["errorType"], "UNKNOWN_QUESTION");
    server.shutdown().await;
}

#[tokio::test]
async fn admin_questions_wait_for_answers_and_continue_conversations() {
    let server = spawn_server().await;
    let base = server.admin_url();
    let (mut c, _) = register_unverified(&server.url(), "ops").await;

    let peer = tokio::spawn(async move {
        // answer three rounds: text, choice, confirm
        let mut seen = Vec::new();
        for answer in [json!("blue"), json!("B"), json!(true)] {
            let q = c.recv_type("server_question").await;
            seen.push(q["payload"].clone());
            c.send(json!({"type":"peer_response","payload":{"questionId":q["payload"]["questionId"],"response":answer}})).await;
        }
        seen
    });

    let (s, a1) = admin_ask(
        &base,
        lattice_server::config::TEST_ADMIN_TOKEN,
        "ops",
        json!({"question":{"text":"Favourite colour?"}}),
    )
    .await;
    assert_eq!(s, 200, "{a1}");
    assert_eq!(a1["response"], "blue");
    assert_eq!(a1["round"], 1);
    let conv = a1["conversationId"].clone();
    let (s, a2) = admin_ask(&base, lattice_server::config::TEST_ADMIN_TOKEN, "ops", json!({"question":{"text":"Pick","kind":"choice","options":["A","B"]},"conversationId":conv})).await;
    assert_eq!(s, 200, "{a2}");
    assert_eq!(a2["response"], "B");
    assert_eq!(a2["round"], 2);
    let (s, a3) = admin_ask(
        &base,
        lattice_server::config::TEST_ADMIN_TOKEN,
        "ops",
        json!({"question":{"text":"Sure?","kind":"confirm"},"conversationId":conv}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(a3["response"], true);
    assert_eq!(a3["round"], 3);
    let seen = peer.await.unwrap();
    assert!(seen.iter().all(|q| q["conversationId"] == conv));
    assert_eq!(seen[1]["question"]["options"], json!(["A", "B"]));
    server.shutdown().await;
}

#[tokio::test]
async fn admin_api_errors() {
    let server = spawn_server().await;
    let base = server.admin_url();
    let (mut c, _) = register_unverified(&server.url(), "quiet").await;
    let (s, _) = admin_ask(
        &base,
        "wrong-token",
        "quiet",
        json!({"question":{"text":"hi"}}),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = admin_ask(
        &base,
        lattice_server::config::TEST_ADMIN_TOKEN,
        "ghost",
        json!({"question":{"text":"hi"}}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = admin_ask(
        &base,
        lattice_server::config::TEST_ADMIN_TOKEN,
        "quiet",
        json!({"question":{"text":"x","kind":"choice","options":["one"]}}),
    )
    .await;
    assert_eq!(s, 400);
    // unanswered: 504, and the late answer is UNKNOWN_QUESTION
    let (s, body) = admin_ask(
        &base,
        lattice_server::config::TEST_ADMIN_TOKEN,
        "quiet",
        json!({"question":{"text":"anyone?"},"timeoutMs":200}),
    )
    .await;
    assert_eq!(s, 504);
    let q = c.recv_type("server_question").await;
    assert_eq!(q["payload"]["questionId"], body["questionId"]);
    c.send(json!({"type":"peer_response","payload":{"questionId":q["payload"]["questionId"],"response":"late"}})).await;
    assert_eq!(c.recv_error().await["errorType"], "UNKNOWN_QUESTION");
    server.shutdown().await;

    // without a token the admin API does not exist
    let server = spawn_with(Config {
        admin_token: None,
        ..Config::for_tests()
    })
    .await;
    let (s, _) = admin_ask(
        &server.admin_url(),
        "anything",
        "x",
        json!({"question":{"text":"hi"}}),
    )
    .await;
    assert_eq!(s, 404);
    server.shutdown().await;
}

/// Attack: a client opens demo conversations as fast as it can. Asserts: beyond
/// `MAX_OPEN_DEMOS_PER_PEER` open at once it gets `RATE_LIMITED` with its `requestId`.
#[tokio::test]
async fn demo_conversations_are_bounded_per_peer() {
    let server = spawn_server().await;
    let (mut c, _) = register_unverified(&server.url(), "curious").await;
    for i in 0..lattice_server::limits::MAX_OPEN_DEMOS_PER_PEER {
        let q = c
            .request(
                json!({"type":"debug_question","payload":{},"requestId":format!("d{i}")}),
                "server_question",
            )
            .await;
        assert_eq!(q["requestId"], format!("d{i}"));
    }
    c.send(json!({"type":"debug_question","payload":{},"requestId":"one-too-many"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["payload"]["errorType"], "RATE_LIMITED", "{e}");
    assert_eq!(e["requestId"], "one-too-many");
    server.shutdown().await;
}
