//! Golden JSON: every frame type decodes from and encodes to the exact shapes of the protocol
//! (the original MessagingPeer's where it has them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lattice_protocol::*;
use serde_json::{json, Value};

fn enc<T: FrameBody>(f: &Frame<T>) -> Value {
    serde_json::from_str(&encode(f)).unwrap()
}

fn raw(v: Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&v).unwrap()
}

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

#[test]
fn client_frames_decode_from_original_shapes() {
    let key: Vec<u8> = (0..1184u32).map(|i| (i % 256) as u8).collect();
    let text = json!({"type":"register","payload":{"clientId":"alice","publicKey":key,
        "verification":{"algorithm":"ml-dsa","serializedPublicKey":"AA==","serializedMessage":"AA==","serializedSignedData":"AA=="}}})
    .to_string();
    let f = decode_client(&text).unwrap();
    let ClientFrame::Register(r) = f.body else {
        panic!("not register")
    };
    assert_eq!(r.client_id.as_str(), "alice");
    assert_eq!(r.public_key.bytes().unwrap(), key.as_slice());
    assert_eq!(r.verification().unwrap().unwrap().algorithm, "ml-dsa");
    assert!(r.key_signature.is_none());

    let cases = [
        (json!({"type":"challenge","payload":{}}), "challenge"),
        (json!({"type":"discover","payload":{}}), "discover"),
        (
            json!({"type":"request_public_key","payload":{"targetId":"bob"}}),
            "request_public_key",
        ),
        (
            json!({"type":"message","payload":{"targetId":"bob","message":{"algorithm":"ml-kem-aes","serializedCipherText":"QQ==","serializedEncryptedData":"Qg=="}}}),
            "message",
        ),
        (
            json!({"type":"peer_response","payload":{"questionId":"q-1","response":"blue"}}),
            "peer_response",
        ),
        (
            json!({"type":"debug_question","payload":{}}),
            "debug_question",
        ),
        (json!({"type":"ack","payload":{"messageId":"m1"}}), "ack"),
    ];
    for (v, ty) in cases {
        let f = decode_client(&v.to_string()).unwrap();
        assert_eq!(f.body.type_name(), ty);
        // Re-encoding yields the same JSON.
        assert_eq!(enc(&f), v, "{ty}");
    }
}

#[test]
fn base64_public_key_is_accepted_on_input_and_array_on_output() {
    let text = r#"{"type":"register","payload":{"clientId":"a","publicKey":"AQID"}}"#;
    let f = decode_client(text).unwrap();
    assert_eq!(enc(&f)["payload"]["publicKey"], json!([1, 2, 3]));
}

#[test]
fn invalid_public_keys_are_typed_not_shape_errors() {
    for pk in [
        json!("***"),
        json!([1, 256]),
        json!([1, "x"]),
        json!(7),
        json!({"a": 1}),
        json!(null),
    ] {
        let text = json!({"type":"register","payload":{"clientId":"a","publicKey":pk}}).to_string();
        let f = decode_client(&text).unwrap();
        let ClientFrame::Register(r) = f.body else {
            panic!()
        };
        assert!(matches!(r.public_key, PublicKeyField::Invalid(_)), "{pk}");
    }
}

#[test]
fn server_frames_encode_to_exact_shapes() {
    let t = 1_700_000_000_123u64;
    let cases: Vec<(ServerFrame, Value)> = vec![
        (
            ServerFrame::Registered(Registered {
                success: true,
                client_id: id("alice"),
                verified: true,
                device_id: None,
            }),
            json!({"type":"register","payload":{"success":true,"clientId":"alice","verified":true}}),
        ),
        (
            ServerFrame::Registered(Registered {
                success: true,
                client_id: id("alice"),
                verified: true,
                device_id: Some(lattice_protocol::DeviceId::new("phone").unwrap()),
            }),
            json!({"type":"register","payload":{"success":true,"clientId":"alice","verified":true,"deviceId":"phone"}}),
        ),
        (
            ServerFrame::DeviceListStored(lattice_protocol::DeviceListStored {
                counter: 4,
                devices: 1,
            }),
            json!({"type":"device_list_upload","payload":{"counter":4,"devices":1}}),
        ),
        (
            ServerFrame::Challenge(Challenge {
                nonce: "AAAA".into(),
            }),
            json!({"type":"challenge","payload":{"nonce":"AAAA"}}),
        ),
        (
            ServerFrame::Peers(Peers {
                peers: vec![id("alice"), id("bob")],
                ..Peers::default()
            }),
            json!({"type":"discover","payload":{"peers":["alice","bob"]}}),
        ),
        (
            ServerFrame::Peers(Peers {
                peers: vec![id("alice")],
                more: true,
                cursor: Some(id("alice")),
            }),
            json!({"type":"discover","payload":{"peers":["alice"],"more":true,"cursor":"alice"}}),
        ),
        (
            ServerFrame::PublicKey(PublicKeyResponse {
                peer_id: id("bob"),
                public_key: vec![1, 2, 3].into(),
                identity_key: None,
                key_signature: None,
                device_list: None,
            }),
            json!({"type":"public_key_response","payload":{"peerId":"bob","publicKey":[1,2,3]}}),
        ),
        (
            ServerFrame::PublicKey(PublicKeyResponse {
                peer_id: id("bob"),
                public_key: vec![9].into(),
                identity_key: Some("SUQ=".into()),
                key_signature: Some("U0lH".into()),
                device_list: None,
            }),
            json!({"type":"public_key_response","payload":{"peerId":"bob","publicKey":[9],"identityKey":"SUQ=","keySignature":"U0lH"}}),
        ),
        (
            ServerFrame::Message(Delivered {
                message: raw(
                    json!({"algorithm":"ml-kem-aes","serializedCipherText":"QQ==","serializedEncryptedData":"Qg=="}),
                ),
                from_id: id("alice"),
                timestamp: t,
                message_id: None,
            }),
            json!({"type":"message","payload":{"message":{"algorithm":"ml-kem-aes","serializedCipherText":"QQ==","serializedEncryptedData":"Qg=="},"fromId":"alice","timestamp":t}}),
        ),
        (
            ServerFrame::MessageAck(MessageAck {
                message_id: MessageId::new("m1").unwrap(),
                target_id: id("bob"),
                status: AckStatus::Queued,
            }),
            json!({"type":"message_ack","payload":{"messageId":"m1","targetId":"bob","status":"queued"}}),
        ),
        (
            ServerFrame::PeerConnected(PeerPresence { peer_id: id("bob") }),
            json!({"type":"peer_connected","payload":{"peerId":"bob"}}),
        ),
        (
            ServerFrame::PeerDisconnected(PeerPresence { peer_id: id("bob") }),
            json!({"type":"peer_disconnected","payload":{"peerId":"bob"}}),
        ),
        (
            ServerFrame::ServerQuestion(ServerQuestion {
                question_id: QuestionId::new("q1").unwrap(),
                question: Question::choice("Pick", vec!["a".into(), "b".into()]),
                conversation_id: Some(ConversationId::new("c1").unwrap()),
                round: Some(2),
            }),
            json!({"type":"server_question","payload":{"questionId":"q1","question":{"text":"Pick","kind":"choice","options":["a","b"]},"conversationId":"c1","round":2}}),
        ),
        (
            ServerFrame::error(
                ErrorType::ClientIdTaken,
                "Client ID alice is already taken",
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(t),
                None,
            ),
            json!({"type":"error","payload":{"errorType":"CLIENT_ID_TAKEN","details":"Client ID alice is already taken","timestamp":"2023-11-14T22:13:20.123Z"}}),
        ),
        (
            ServerFrame::KeyPackagesStored(KeyPackagesStored {
                stock: 32,
                last_resort: true,
            }),
            json!({"type":"key_package_upload","payload":{"stock":32,"lastResort":true}}),
        ),
        (
            ServerFrame::KeyPackage(KeyPackageFound {
                client_id: id("bob"),
                key_package: "AAEC".into(),
                last_resort: false,
                devices: None,
            }),
            json!({"type":"key_package_fetch","payload":{"clientId":"bob","keyPackage":"AAEC","lastResort":false}}),
        ),
        (
            ServerFrame::KeyPackagesLow(KeyPackagesLow { stock: 3 }),
            json!({"type":"key_packages_low","payload":{"stock":3}}),
        ),
        (
            ServerFrame::GroupCommitAccepted(GroupCommitAccepted {
                group_id: GroupId::new("0a1b").unwrap(),
                epoch: 5,
                message_id: MessageId::new("c-5").unwrap(),
            }),
            json!({"type":"group_commit","payload":{"groupId":"0a1b","epoch":5,"messageId":"c-5"}}),
        ),
        (
            ServerFrame::GroupMessageAccepted(GroupMessageAccepted {
                group_id: GroupId::new("0a1b").unwrap(),
                message_id: MessageId::new("m-1").unwrap(),
                recipients: 4,
            }),
            json!({"type":"group_message","payload":{"groupId":"0a1b","messageId":"m-1","recipients":4}}),
        ),
        (
            ServerFrame::BlobToken(BlobToken {
                token: "dG9rZW4".into(),
                expires_in_ms: 300_000,
            }),
            json!({"type":"blob_token","payload":{"token":"dG9rZW4","expiresInMs":300000}}),
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (frame, want) in cases {
        seen.insert(frame.type_name());
        let f = Frame::new(frame);
        assert_eq!(enc(&f), want);
        // and the client side decodes it back to the same JSON
        let back = decode_server(&encode(&f)).unwrap();
        assert_eq!(enc(&back), want);
    }
    assert_eq!(
        seen.len(),
        ServerFrame::TYPES.len(),
        "every server frame type has a golden case"
    );
}

#[test]
fn request_id_is_top_level_and_echoed_in_errors() {
    let rid = RequestId::new("req-42").unwrap();
    let f = Frame::with_request_id(
        ServerFrame::error(
            ErrorType::PeerNotFound,
            "Target peer bob not found",
            std::time::UNIX_EPOCH,
            Some(rid.clone()),
        ),
        Some(rid),
    );
    let v = enc(&f);
    assert_eq!(v["requestId"], "req-42");
    assert_eq!(v["payload"]["requestId"], "req-42");
}

#[test]
fn decode_errors_are_typed_and_keep_request_id() {
    let e = decode_client("not json").unwrap_err();
    assert_eq!(e.error_type, ErrorType::InvalidMessage);
    assert!(e.details.starts_with("Invalid JSON"));

    let e = decode_client(r#"[1,2]"#).unwrap_err();
    assert_eq!(e.error_type, ErrorType::InvalidMessage);

    let e = decode_client(r#"{"type":"warp","payload":{},"requestId":"r1"}"#).unwrap_err();
    assert_eq!(e.details, "Unknown message type: warp");
    assert_eq!(e.request_id.unwrap().as_str(), "r1");

    let e = decode_client(r#"{"type":"request_public_key","payload":{},"requestId":"r2"}"#)
        .unwrap_err();
    assert!(e.details.contains("targetId"), "{}", e.details);
    assert_eq!(e.frame_type.as_deref(), Some("request_public_key"));
    assert_eq!(e.request_id.unwrap().as_str(), "r2");

    let e = decode_client(r#"{"type":"discover"}"#).unwrap_err();
    assert!(e.details.contains("payload"));

    let e = decode_client(r#"{"type":"register","payload":{"clientId":"bad id","publicKey":[]}}"#)
        .unwrap_err();
    assert!(e.details.contains("clientId"), "{}", e.details);

    let big = format!(
        r#"{{"type":"discover","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(limits::MAX_FRAME_BYTES)
    );
    assert_eq!(
        decode_client(&big).unwrap_err().error_type,
        ErrorType::MessageTooLarge
    );
    // the error still names the request
    let big = format!(
        r#"{{"type":"message","payload":{{"targetId":"b","message":{{"x":"{}"}}}},"requestId":"r-big"}}"#,
        "x".repeat(limits::MAX_FRAME_BYTES)
    );
    let e = decode_client(&big).unwrap_err();
    assert_eq!(e.error_type, ErrorType::MessageTooLarge);
    assert_eq!(e.request_id.unwrap().as_str(), "r-big");
}

/// `group_commit` may be larger than the ordinary frame cap, up to its own; no other frame may,
/// whatever it claims, and the error names the request either way.
#[test]
fn group_commit_frames_have_their_own_larger_limit() {
    let commit = |pad: usize, ty: &str| {
        let head = format!(
            r#"{{"type":"{ty}","requestId":"c1","payload":{{"groupId":"{}","epoch":3,"members":["a"],"messageId":"m","commit":""#,
            "ab".repeat(16)
        );
        format!("{head}{}\"}}}}", "A".repeat(pad))
    };
    // Between the two caps: a group_commit decodes...
    let ok = commit(limits::MAX_FRAME_BYTES + 1000, "group_commit");
    assert!(ok.len() > limits::MAX_FRAME_BYTES && ok.len() < limits::MAX_GROUP_COMMIT_FRAME_BYTES);
    let f = decode_client(&ok).unwrap();
    assert_eq!(f.body.type_name(), "group_commit");
    assert_eq!(f.request_id.unwrap().as_str(), "c1");
    // ...any other type of that size is too large (group_message carries the same fields).
    let e = decode_client(&commit(limits::MAX_FRAME_BYTES + 1000, "group_message")).unwrap_err();
    assert_eq!(e.error_type, ErrorType::MessageTooLarge);
    assert_eq!(e.request_id.unwrap().as_str(), "c1");
    // Past its own cap a group_commit is too large too.
    let e = decode_client(&commit(
        limits::MAX_GROUP_COMMIT_FRAME_BYTES,
        "group_commit",
    ))
    .unwrap_err();
    assert_eq!(e.error_type, ErrorType::MessageTooLarge);
    assert!(
        e.details
            .contains(&limits::MAX_GROUP_COMMIT_FRAME_BYTES.to_string()),
        "{}",
        e.details
    );
    assert_eq!(e.request_id.unwrap().as_str(), "c1");
    // A server frame (a delivered Welcome) up to the server's largest decodes on the client.
    let delivered = format!(
        r#"{{"type":"message","payload":{{"fromId":"a","timestamp":1,"message":{{"algorithm":"mls","data":"{}"}}}}}}"#,
        "A".repeat(limits::MAX_GROUP_COMMIT_FRAME_BYTES)
    );
    assert!(delivered.len() <= limits::MAX_SERVER_FRAME_BYTES);
    assert_eq!(
        decode_server(&delivered).unwrap().body.type_name(),
        "message"
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let f = decode_client(r#"{"type":"discover","payload":{"future":1},"extra":true}"#).unwrap();
    assert_eq!(f.body.type_name(), "discover");
    let f = decode_server(r#"{"type":"server_question","payload":{"questionId":"q","question":{"text":"hi","kind":"slider"}}}"#).unwrap();
    let ServerFrame::ServerQuestion(q) = f.body else {
        panic!()
    };
    assert_eq!(q.question.kind, Some(QuestionKind::Other));
    let f = decode_server(
        r#"{"type":"error","payload":{"errorType":"SOMETHING_NEW","details":"x","timestamp":"t"}}"#,
    )
    .unwrap();
    let ServerFrame::Error(e) = f.body else {
        panic!()
    };
    assert_eq!(e.error_type, ErrorType::Other);
}

#[test]
fn envelope_and_inner_message_shapes() {
    let env = Envelope::from_bytes("lattice-v1", &[1, 2], &[3]);
    assert_eq!(
        serde_json::to_value(&env).unwrap(),
        json!({"algorithm":"lattice-v1","serializedCipherText":"AQI=","serializedEncryptedData":"Aw=="})
    );
    assert_eq!(env.to_bytes().unwrap(), (vec![1, 2], vec![3]));
    let inner = InnerMessage {
        v: 1,
        kind: "text".into(),
        message_id: MessageId::new("m").unwrap(),
        body: "hi".into(),
        sent_at: 5,
        sig: "c2ln".into(),
    };
    assert_eq!(
        serde_json::to_value(&inner).unwrap(),
        json!({"v":1,"kind":"text","messageId":"m","body":"hi","sentAt":5,"sig":"c2ln"})
    );
}

#[test]
fn key_order_does_not_matter() {
    // `type` first takes the single-pass path, `payload` first the two-step one: same frame.
    let a = decode_client(r#"{"type":"ack","payload":{"messageId":"m"},"requestId":"r"}"#).unwrap();
    let b = decode_client(r#"{"requestId":"r","payload":{"messageId":"m"},"type":"ack"}"#).unwrap();
    assert_eq!(enc(&a), enc(&b));
    assert_eq!(b.request_id.unwrap().as_str(), "r");
    // an escaped type name still decodes
    let c = decode_client(r#"{"type":"disc\u006fver","payload":{}}"#).unwrap();
    assert_eq!(c.body.type_name(), "discover");
    // a bad requestId after a good payload is still reported
    let e = decode_client(r#"{"type":"discover","payload":{},"requestId":""}"#).unwrap_err();
    assert!(e.details.contains("requestId"));
}

#[test]
fn mls_delivery_frames_have_their_documented_shapes() {
    let f = decode_client(
        r#"{"type":"key_package_upload","payload":{"keyPackages":["AAEC"],"lastResort":"AwQF"},"requestId":"u1"}"#,
    )
    .unwrap();
    let ClientFrame::KeyPackageUpload(u) = f.body else {
        panic!("not key_package_upload")
    };
    assert_eq!(u.key_packages, ["AAEC"]);
    assert_eq!(u.last_resort.as_deref(), Some("AwQF"));
    // an empty upload only asks for the stock
    let f = decode_client(r#"{"type":"key_package_upload","payload":{}}"#).unwrap();
    assert!(matches!(f.body, ClientFrame::KeyPackageUpload(u) if u == KeyPackageUpload::default()));
    let f = decode_client(r#"{"type":"key_package_fetch","payload":{"clientId":"bob"}}"#).unwrap();
    assert!(matches!(f.body, ClientFrame::KeyPackageFetch(k) if k.client_id.as_str() == "bob"));
    let f = decode_client(
        r#"{"type":"group_commit","payload":{"groupId":"0a1b","epoch":3,"commit":"AAEC","welcome":"BBEC","members":["alice","bob"],"messageId":"c3"}}"#,
    )
    .unwrap();
    let ClientFrame::GroupCommit(c) = f.body else {
        panic!("not group_commit")
    };
    assert_eq!((c.group_id.as_str(), c.epoch), ("0a1b", 3));
    assert_eq!(c.members, [id("alice"), id("bob")]);
    let f =
        decode_client(r#"{"type":"group_message","payload":{"groupId":"0a1b","message":"AAEC"}}"#)
            .unwrap();
    assert!(matches!(f.body, ClientFrame::GroupMessage(m) if m.message_id.is_none()));
    let f = decode_client(r#"{"type":"blob_token","requestId":"b1","payload":{}}"#).unwrap();
    assert!(matches!(f.body, ClientFrame::BlobToken(_)));
    // a group id is lowercase hex; a Commit names its epoch and message id
    for bad in [
        r#"{"type":"group_message","payload":{"groupId":"0A1B","message":"AAEC"}}"#,
        r#"{"type":"group_commit","payload":{"groupId":"0a","commit":"AAEC","members":[],"messageId":"c"}}"#,
        r#"{"type":"group_commit","payload":{"groupId":"0a","epoch":1,"commit":"AAEC","members":[]}}"#,
    ] {
        assert_eq!(
            decode_client(bad).unwrap_err().error_type,
            ErrorType::InvalidMessage,
            "{bad}"
        );
    }
    // the epoch refusal carries the current epoch
    let mut e = ServerFrame::error(ErrorType::StaleEpoch, "stale", std::time::UNIX_EPOCH, None);
    if let ServerFrame::Error(p) = &mut e {
        p.current_epoch = Some(7);
    }
    let v = enc(&Frame::new(e));
    assert_eq!(v["payload"]["errorType"], "STALE_EPOCH");
    assert_eq!(v["payload"]["currentEpoch"], 7);
    // the envelope members get
    let env = MlsEnvelope {
        algorithm: MLS_ALGORITHM.into(),
        kind: MlsKind::Welcome,
        group_id: GroupId::new("0a1b").unwrap(),
        epoch: Some(4),
        data: "AAEC".into(),
    };
    assert_eq!(
        serde_json::to_value(&env).unwrap(),
        json!({"algorithm":"mls","kind":"welcome","groupId":"0a1b","epoch":4,"data":"AAEC"})
    );
}

#[test]
fn device_frames_decode_from_the_documented_shapes() {
    let text = r#"{"type":"register","requestId":"r-2","payload":{"clientId":"alice","publicKey":"AAEC",
        "keySignature":"U0lH","device":{"deviceId":"phone","deviceKey":"REVW","certificate":"Q0VSVA==",
        "deviceList":{"counter":3,"devices":[{"deviceId":"phone","deviceKey":"REVW"}],"signature":"U0lH"}},
        "verification":{"algorithm":"ed25519"}}}"#;
    let f = decode_client(text).unwrap();
    let ClientFrame::Register(r) = f.body else {
        panic!("not a register: {:?}", f.body)
    };
    let device = r.device.expect("device part");
    assert_eq!(device.device_id.as_str(), "phone");
    let list = device.device_list.expect("device list");
    assert_eq!(list.counter, 3);
    assert_eq!(list.devices[0].device_id.as_str(), "phone");

    // A register without the device part is today's registration.
    let plain =
        decode_client(r#"{"type":"register","payload":{"clientId":"alice","publicKey":"AAEC"}}"#)
            .unwrap();
    let ClientFrame::Register(r) = plain.body else {
        panic!("not a register")
    };
    assert!(r.device.is_none());

    let up = decode_client(
        r#"{"type":"device_list_upload","payload":{"deviceList":{"counter":4,"devices":[],"signature":"U0lH"}}}"#,
    )
    .unwrap();
    assert!(matches!(up.body, ClientFrame::DeviceListUpload(u) if u.device_list.counter == 4));

    let fetch = decode_client(
        r#"{"type":"key_package_fetch","payload":{"clientId":"bob","allDevices":true}}"#,
    )
    .unwrap();
    assert!(matches!(fetch.body, ClientFrame::KeyPackageFetch(k) if k.all_devices));

    // A device id outside the charset is a shape error, not a panic.
    assert!(decode_client(
        r#"{"type":"register","payload":{"clientId":"a","publicKey":"AAEC","device":{"deviceId":"a/b","deviceKey":"","certificate":""}}}"#
    )
    .is_err());
}
