//! Property tests: decoding never panics, and frames survive an encode/decode round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use lattice_protocol::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode_client(&text);
        let _ = decode_server(&text);
    }

    #[test]
    fn decoding_json_like_text_never_panics(s in r#"\{("(type|payload|requestId|clientId|targetId|publicKey|message)"|[:,\[\]{}0-9"a-z_ ]){0,40}\}"#) {
        let _ = decode_client(&s);
        let _ = decode_server(&s);
    }

    #[test]
    fn client_ids_round_trip(s in "[A-Za-z0-9._@-]{1,64}", rid in "[!-~]{1,64}") {
        let target = ClientId::new(s.clone()).unwrap();
        let f = Frame::with_request_id(
            ClientFrame::RequestPublicKey(RequestPublicKey { target_id: target }),
            Some(RequestId::new(rid.clone()).unwrap()),
        );
        let back = decode_client(&encode(&f)).unwrap();
        let got = back.request_id.unwrap();
        prop_assert_eq!(got.as_str(), rid.as_str());
        match back.body {
            ClientFrame::RequestPublicKey(p) => prop_assert_eq!(p.target_id.as_str(), s.as_str()),
            other => prop_assert!(false, "wrong frame {:?}", other),
        }
    }

    #[test]
    fn public_keys_and_messages_round_trip(key in proptest::collection::vec(any::<u8>(), 0..1300), body in ".{0,200}", ts in any::<u64>()) {
        let f = Frame::new(ServerFrame::PublicKey(PublicKeyResponse {
            peer_id: ClientId::new("p").unwrap(),
            public_key: key.clone().into(),
            identity_key: None,
            key_signature: None,
            device_list: None,
        }));
        match decode_server(&encode(&f)).unwrap().body {
            ServerFrame::PublicKey(p) => prop_assert_eq!(p.public_key.bytes().unwrap(), key.as_slice()),
            other => prop_assert!(false, "wrong frame {:?}", other),
        }
        let env = serde_json::value::to_raw_value(&serde_json::json!({"algorithm": "x", "serializedCipherText": body, "serializedEncryptedData": ""})).unwrap();
        let f = Frame::new(ServerFrame::Message(Delivered { message: env.clone(), from_id: ClientId::new("a").unwrap(), timestamp: ts, message_id: None }));
        match decode_server(&encode(&f)).unwrap().body {
            ServerFrame::Message(m) => { prop_assert_eq!(m.message.get(), env.get()); prop_assert_eq!(m.timestamp, ts); }
            other => prop_assert!(false, "wrong frame {:?}", other),
        }
    }
}
