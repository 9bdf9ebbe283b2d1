//! Encoding and decoding of whole frames.
//!
//! Decoding is two-step: the outer object is parsed with the payload kept raw, then the payload is
//! parsed by type. That gives precise errors (unknown type vs. bad payload), recovers the
//! `requestId` even from a frame whose payload is bad, and never copies a sealed envelope twice.

use std::borrow::Cow;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::frames::{ClientFrame, FrameBody, ServerFrame};
use crate::ids::RequestId;
use crate::limits::{MAX_FRAME_BYTES, MAX_SERVER_FRAME_BYTES};
use crate::ErrorType;

/// A frame with its optional top-level `requestId`.
#[derive(Debug, Clone)]
pub struct Frame<T> {
    /// *ext*: copied by the server into its direct answer.
    pub request_id: Option<RequestId>,
    /// The typed frame.
    pub body: T,
}

impl<T> Frame<T> {
    /// A frame without a request id.
    pub fn new(body: T) -> Self {
        Self {
            request_id: None,
            body,
        }
    }

    /// A frame with a request id.
    pub fn with_request_id(body: T, request_id: Option<RequestId>) -> Self {
        Self { request_id, body }
    }
}

impl<T: FrameBody> Serialize for Frame<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(if self.request_id.is_some() { 3 } else { 2 }))?;
        map.serialize_entry("type", self.body.type_name())?;
        self.body.serialize_payload(&mut map)?;
        if let Some(id) = &self.request_id {
            map.serialize_entry("requestId", id)?;
        }
        map.end()
    }
}

/// Encodes a frame as one JSON text.
///
/// ```
/// use lattice_protocol::{encode, ClientFrame, Discover, Frame};
/// assert_eq!(encode(&Frame::new(ClientFrame::Discover(Discover::default()))), r#"{"type":"discover","payload":{}}"#);
/// ```
pub fn encode<T: FrameBody>(frame: &Frame<T>) -> String {
    // Serializing our own types into a String cannot fail: no map has non-string keys and no
    // custom Serialize impl returns an error.
    serde_json::to_string(frame).unwrap_or_else(|_| String::from("{}"))
}

/// Why a text is not a valid frame. Maps onto an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {details}")]
pub struct DecodeError {
    /// The `errorType` to answer with.
    pub error_type: ErrorType,
    /// A readable sentence.
    pub details: String,
    /// The frame's `requestId`, when it could be read.
    pub request_id: Option<RequestId>,
    /// The frame's `type`, when it could be read.
    pub frame_type: Option<String>,
}

impl DecodeError {
    fn invalid(details: impl Into<String>) -> Self {
        Self {
            error_type: ErrorType::InvalidMessage,
            details: details.into(),
            request_id: None,
            frame_type: None,
        }
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<&'a RawValue>,
}

/// The single-pass decoder: one scan of the text when `type` precedes `payload` (as every known
/// client writes it). Anything unusual (payload first, bad requestId, any error) returns `None`, and
/// the two-step decoder below produces the frame or the precise error.
struct FastFrame<T>(Option<Frame<T>>);

impl<'de, T: FrameBody> Deserialize<'de> for FastFrame<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: FrameBody> serde::de::Visitor<'de> for V<T> {
            type Value = FastFrame<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a frame object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut ty: Option<Cow<'de, str>> = None;
                let mut body: Option<T> = None;
                let mut request_id: Option<RequestId> = None;
                let mut usable = true;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => ty = Some(map.next_value::<BorrowedStr<'de>>()?.0),
                        "payload" => match &ty {
                            Some(t) => match map
                                .next_value_seed(PayloadSeed::<T>(t, std::marker::PhantomData))?
                            {
                                Some(b) => body = Some(b),
                                None => usable = false,
                            },
                            None => {
                                usable = false;
                                map.next_value::<serde::de::IgnoredAny>()?;
                            }
                        },
                        "requestId" => match map.next_value::<Option<RequestId>>() {
                            Ok(r) => request_id = r,
                            Err(e) => return Err(e),
                        },
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(FastFrame(match (usable, body) {
                    (true, Some(body)) => Some(Frame { request_id, body }),
                    _ => None,
                }))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

struct PayloadSeed<'t, T>(&'t str, std::marker::PhantomData<T>);

impl<'de, T: FrameBody> serde::de::DeserializeSeed<'de> for PayloadSeed<'_, T> {
    type Value = Option<T>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        T::deserialize_payload(self.0, d)
    }
}

fn decode<T: FrameBody>(
    text: &str,
    limit: impl Fn(&str) -> usize,
) -> Result<Frame<T>, DecodeError> {
    if text.len() > MAX_FRAME_BYTES {
        // Past the ordinary cap only a frame type allowed more may pass (`group_commit` from a
        // client); its type is read without keeping anything else of the frame.
        let head = oversized_head(text);
        let allowed = head.ty.as_deref().map_or(MAX_FRAME_BYTES, &limit);
        if text.len() > allowed {
            return Err(DecodeError {
                error_type: ErrorType::MessageTooLarge,
                details: format!(
                    "Frame of {} bytes exceeds the limit of {allowed} bytes",
                    text.len()
                ),
                request_id: head.request_id,
                frame_type: None,
            });
        }
    }
    if let Ok(FastFrame(Some(frame))) = serde_json::from_str::<FastFrame<T>>(text) {
        return Ok(frame);
    }
    decode_slow(text)
}

/// The `type` and `requestId` of a frame larger than [`MAX_FRAME_BYTES`]: its type decides its
/// limit, and an error still names the request. The text is bounded by the transport (the server
/// reads at most `MAX_GROUP_COMMIT_FRAME_BYTES` plus a margin); everything else is skipped
/// without being stored.
#[derive(Default, Deserialize)]
struct OversizedHead {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(rename = "requestId", default)]
    request_id: Option<RequestId>,
}

fn oversized_head(text: &str) -> OversizedHead {
    serde_json::from_str::<OversizedHead>(text).unwrap_or_default()
}

fn decode_slow<T: FrameBody>(text: &str) -> Result<Frame<T>, DecodeError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            DecodeError::invalid("A frame must be a JSON object with a type and a payload")
        } else {
            DecodeError::invalid(format!("Invalid JSON: {e}"))
        }
    })?;
    let request_id = match raw.request_id {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => Some(serde_json::from_str::<RequestId>(v.get()).map_err(|_| {
            DecodeError::invalid("requestId must be a string of 1-64 printable characters")
        })?),
    };
    let with_ids = |mut e: DecodeError, ty: Option<&str>| {
        e.request_id.clone_from(&request_id);
        e.frame_type = ty.map(str::to_owned);
        e
    };
    let Some(ty) = raw.ty else {
        return Err(with_ids(DecodeError::invalid("Missing field: type"), None));
    };
    let Some(payload) = raw.payload else {
        return Err(with_ids(
            DecodeError::invalid(format!("Missing field: payload ({ty})")),
            Some(&ty),
        ));
    };
    match T::from_parts(&ty, payload.get()) {
        Ok(Some(body)) => Ok(Frame { request_id, body }),
        Ok(None) => Err(with_ids(
            DecodeError::invalid(format!("Unknown message type: {}", truncate(&ty, 40))),
            None,
        )),
        Err(e) => Err(with_ids(
            DecodeError::invalid(format!("Invalid {ty} payload: {}", strip_position(&e))),
            Some(&ty),
        )),
    }
}

/// serde_json appends " at line 1 column 123"; the position inside the payload means nothing to a
/// reader of the error, the sentence before it does.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Decodes a frame sent by a client.
///
/// # Errors
/// [`DecodeError`] with `MESSAGE_TOO_LARGE` for frames over their type's limit
/// ([`crate::limits::max_client_frame_bytes`]: [`MAX_FRAME_BYTES`], or
/// [`crate::limits::MAX_GROUP_COMMIT_FRAME_BYTES`] for `group_commit`) and
/// `INVALID_MESSAGE` for bad JSON, a missing `type` or `payload`, an unknown type or a payload of the
/// wrong shape.
///
/// ```
/// use lattice_protocol::{decode_client, ClientFrame};
/// let f = decode_client(r#"{"type":"request_public_key","payload":{"targetId":"bob"},"requestId":"7"}"#).unwrap();
/// assert!(matches!(f.body, ClientFrame::RequestPublicKey(ref p) if p.target_id.as_str() == "bob"));
/// assert_eq!(f.request_id.unwrap().as_str(), "7");
/// assert!(decode_client("{").is_err());
/// ```
pub fn decode_client(text: &str) -> Result<Frame<ClientFrame>, DecodeError> {
    decode(text, crate::limits::max_client_frame_bytes)
}

/// Decodes a frame sent by the server.
///
/// # Errors
/// As [`decode_client`], with one limit for every type: [`MAX_SERVER_FRAME_BYTES`] (a delivered
/// MLS Commit or Welcome is the largest server frame).
pub fn decode_server(text: &str) -> Result<Frame<ServerFrame>, DecodeError> {
    decode(text, |_| MAX_SERVER_FRAME_BYTES)
}
