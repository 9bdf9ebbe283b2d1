//! The relay's hot path: a `message` frame decoded without copying its sealed envelope, and the
//! `message` / `message_ack` frames encoded at their exact size. The output is byte for byte what
//! [`crate::encode`] produces (tests hold the two together); only the work differs.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ids::{ClientId, MessageId, RequestId};
use crate::limits::MAX_FRAME_BYTES;
use crate::AckStatus;

/// A `message` frame from a client, borrowing its envelope from the received text.
#[derive(Debug)]
pub struct MessageRef<'a> {
    /// The recipient.
    pub target_id: ClientId,
    /// The sealed envelope, as received.
    pub message: &'a RawValue,
    /// The sender's message id.
    pub message_id: Option<MessageId>,
    /// The request id.
    pub request_id: Option<RequestId>,
}

#[derive(Deserialize)]
struct Outer<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(borrow)]
    payload: Payload<'a>,
    #[serde(rename = "requestId", default)]
    request_id: Option<RequestId>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(rename = "targetId")]
    target_id: ClientId,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(rename = "messageId", default)]
    message_id: Option<MessageId>,
}

/// Decodes `text` if it is a well-formed `message` frame whose envelope is an object; `None`
/// otherwise (the caller then uses [`crate::decode_client`], which gives the precise error).
///
/// ```
/// let f = lattice_protocol::fast::decode_message_ref(
///     r#"{"type":"message","payload":{"targetId":"bob","message":{"algorithm":"x"}}}"#,
/// ).unwrap();
/// assert_eq!(f.target_id.as_str(), "bob");
/// assert_eq!(f.message.get(), r#"{"algorithm":"x"}"#);
/// ```
pub fn decode_message_ref(text: &str) -> Option<MessageRef<'_>> {
    // Cheap filter: every client we know writes `type` first. Anything else takes the general path.
    if text.len() > MAX_FRAME_BYTES || !text.starts_with(r#"{"type":"message""#) {
        return None;
    }
    let outer: Outer<'_> = serde_json::from_str(text).ok()?;
    if outer.ty != "message" || !outer.payload.message.get().starts_with('{') {
        return None;
    }
    Some(MessageRef {
        target_id: outer.payload.target_id,
        message: outer.payload.message,
        message_id: outer.payload.message_id,
        request_id: outer.request_id,
    })
}

fn push_json_str(out: &mut String, s: &str) {
    // Client ids never need escaping; message and request ids may hold `"` or `\`.
    if s.bytes().all(|b| b != b'"' && b != b'\\' && b >= 0x20) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

/// Encodes the `message` frame delivered to a recipient.
pub fn encode_delivered(
    message: &str,
    from_id: &ClientId,
    timestamp: u64,
    message_id: Option<&MessageId>,
) -> String {
    let mut out = String::with_capacity(message.len() + 160);
    out.push_str(r#"{"type":"message","payload":{"message":"#);
    out.push_str(message);
    out.push_str(r#","fromId":"#);
    push_json_str(&mut out, from_id.as_str());
    out.push_str(r#","timestamp":"#);
    out.push_str(itoa_u64(timestamp).as_str());
    if let Some(mid) = message_id {
        out.push_str(r#","messageId":"#);
        push_json_str(&mut out, mid.as_str());
    }
    out.push_str("}}");
    out
}

/// Encodes the `message_ack` frame for the sender.
pub fn encode_message_ack(
    message_id: &MessageId,
    target_id: &ClientId,
    status: AckStatus,
    request_id: Option<&RequestId>,
) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(r#"{"type":"message_ack","payload":{"messageId":"#);
    push_json_str(&mut out, message_id.as_str());
    out.push_str(r#","targetId":"#);
    push_json_str(&mut out, target_id.as_str());
    out.push_str(match status {
        AckStatus::Delivered => r#","status":"delivered"}"#,
        AckStatus::Queued => r#","status":"queued"}"#,
    });
    if let Some(rid) = request_id {
        out.push_str(r#","requestId":"#);
        push_json_str(&mut out, rid.as_str());
    }
    out.push('}');
    out
}

fn itoa_u64(v: u64) -> String {
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, Delivered, Frame, MessageAck, ServerFrame};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fast_encoders_match_serde(mid in "[!-~]{1,64}", from in "[A-Za-z0-9._@-]{1,64}", ts in any::<u64>(), rid in proptest::option::of("[!-~]{1,64}"), body in ".{0,100}") {
            let env = serde_json::value::to_raw_value(&serde_json::json!({"algorithm": "x", "body": body})).unwrap();
            let from = ClientId::new(from).unwrap();
            let mid = MessageId::new(mid).unwrap();
            for m in [None, Some(&mid)] {
                let slow = encode(&Frame::new(ServerFrame::Message(Delivered { message: env.clone(), from_id: from.clone(), timestamp: ts, message_id: m.cloned() })));
                prop_assert_eq!(encode_delivered(env.get(), &from, ts, m), slow);
            }
            let rid = rid.map(|r| RequestId::new(r).unwrap());
            for status in [AckStatus::Delivered, AckStatus::Queued] {
                let slow = encode(&Frame::with_request_id(ServerFrame::MessageAck(MessageAck { message_id: mid.clone(), target_id: from.clone(), status }), rid.clone()));
                prop_assert_eq!(encode_message_ack(&mid, &from, status, rid.as_ref()), slow);
            }
        }

        #[test]
        fn the_fast_decoder_agrees_with_the_general_one(target in "[A-Za-z0-9]{1,10}", mid in proptest::option::of("[!-~]{1,20}"), rid in proptest::option::of("[a-z0-9]{1,10}")) {
            // Written out by hand: `json!` sorts keys, and clients put `type` first.
            let mid_json = mid.as_ref().map(|m| format!(r#","messageId":{}"#, serde_json::Value::from(m.as_str()))).unwrap_or_default();
            let rid_json = rid.as_ref().map(|r| format!(r#","requestId":"{r}""#)).unwrap_or_default();
            let text = format!(r#"{{"type":"message","payload":{{"targetId":"{target}","message":{{"algorithm":"a","serializedCipherText":"QQ=="}}{mid_json}}}{rid_json}}}"#);
            let fast = decode_message_ref(&text).unwrap();
            let slow = crate::decode_client(&text).unwrap();
            let crate::ClientFrame::Message(m) = slow.body else { panic!() };
            prop_assert_eq!(fast.target_id, m.target_id);
            prop_assert_eq!(fast.message.get(), m.message.get());
            prop_assert_eq!(fast.message_id, m.message_id);
            prop_assert_eq!(fast.request_id, slow.request_id);
        }
    }

    /// The largest `message` a client may send, relayed with the longest sender id and a message
    /// id that needs the most escaping, stays within the largest non-MLS frame clients must read.
    #[test]
    fn the_largest_relayed_message_fits_max_server_frame_bytes() {
        use crate::limits::{MAX_FRAME_BYTES, MAX_ID_LEN, MAX_SERVER_FRAME_BYTES_NON_MLS};
        let quotes = "\"".repeat(MAX_ID_LEN);
        let mid_json = serde_json::Value::from(quotes.as_str()).to_string();
        let target = "t";
        let head =
            format!(r#"{{"type":"message","payload":{{"targetId":"{target}","message":{{"a":""#);
        let tail = format!(r#""}},"messageId":{mid_json}}}}}"#);
        let fill = "A".repeat(MAX_FRAME_BYTES - head.len() - tail.len());
        let text = format!("{head}{fill}{tail}");
        assert_eq!(text.len(), MAX_FRAME_BYTES);
        let m = decode_message_ref(&text).unwrap();
        let from = ClientId::new("f".repeat(MAX_ID_LEN)).unwrap();
        let out = encode_delivered(m.message.get(), &from, u64::MAX, m.message_id.as_ref());
        assert!(out.len() > MAX_FRAME_BYTES - 100);
        assert!(out.len() <= MAX_SERVER_FRAME_BYTES_NON_MLS, "{}", out.len());
    }

    #[test]
    fn anything_unusual_falls_back() {
        for t in [
            r#"{"payload":{"targetId":"b","message":{}},"type":"message"}"#, // type not first
            r#"{"type":"message","payload":{"targetId":"b","message":"text"}}"#, // not an object
            r#"{"type":"message","payload":{"targetId":"bad id","message":{}}}"#,
            r#"{"type":"message","payload":{"message":{}}}"#,
            r#"{"type":"message","payload":{"targetId":"b","message":{}},"requestId":""}"#,
            r#"{"type":"messages","payload":{"targetId":"b","message":{}}}"#,
            "{\"type\":\"message\"",
        ] {
            assert!(decode_message_ref(t).is_none(), "{t}");
        }
    }
}
