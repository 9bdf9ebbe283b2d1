use base64::Engine as _;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `publicKey` field: on the wire a JSON array of byte values (`[12, 200, ...]`); on input a
/// standard base64 string is accepted too.
///
/// Decoding never fails on the *content* of the field: anything that is not a byte array or base64
/// string becomes [`PublicKeyField::Invalid`], so the server can answer `INVALID_PUBLIC_KEY` instead of
/// a generic `INVALID_MESSAGE`.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKeyField {
    /// The key bytes (length not yet checked).
    Bytes(Vec<u8>),
    /// The field held something else; the string says what.
    Invalid(&'static str),
}

impl PublicKeyField {
    /// The bytes, if the field held bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            Self::Invalid(_) => None,
        }
    }
}

impl From<Vec<u8>> for PublicKeyField {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

impl std::fmt::Debug for PublicKeyField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "PublicKey({} bytes)", b.len()),
            Self::Invalid(why) => write!(f, "PublicKey(invalid: {why})"),
        }
    }
}

impl Serialize for PublicKeyField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // A byte slice would serialize as an array too, but be explicit: this shape is the contract.
            Self::Bytes(b) => s.collect_seq(b.iter()),
            Self::Invalid(_) => s.collect_seq(std::iter::empty::<u8>()),
        }
    }
}

impl<'de> Deserialize<'de> for PublicKeyField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PublicKeyField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of byte values or a base64 string")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                let mut bad = false;
                while let Some(v) = seq.next_element::<ByteOrOther>()? {
                    match v {
                        ByteOrOther::Byte(b) if !bad => out.push(b),
                        _ => bad = true,
                    }
                }
                Ok(if bad {
                    PublicKeyField::Invalid("the array holds a value that is not a byte (0-255)")
                } else {
                    PublicKeyField::Bytes(out)
                })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(b) => PublicKeyField::Bytes(b),
                    Err(_) => PublicKeyField::Invalid("the string is not valid base64"),
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(PublicKeyField::Invalid(
                    "expected a byte array, got a boolean",
                ))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(PublicKeyField::Invalid(
                    "expected a byte array, got a number",
                ))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(PublicKeyField::Invalid(
                    "expected a byte array, got a number",
                ))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(PublicKeyField::Invalid(
                    "expected a byte array, got a number",
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(PublicKeyField::Invalid("expected a byte array, got null"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(PublicKeyField::Invalid(
                    "expected a byte array, got an object",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of a byte array: a byte, or anything else (which makes the key invalid).
enum ByteOrOther {
    Byte(u8),
    Other,
}

impl<'de> Deserialize<'de> for ByteOrOther {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteOrOther;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteOrOther, E> {
                Ok(u8::try_from(v).map_or(ByteOrOther::Other, ByteOrOther::Byte))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteOrOther, E> {
                Ok(u8::try_from(v).map_or(ByteOrOther::Other, ByteOrOther::Byte))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ByteOrOther, E> {
                Ok(ByteOrOther::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<ByteOrOther, E> {
                Ok(ByteOrOther::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ByteOrOther, E> {
                Ok(ByteOrOther::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<ByteOrOther, E> {
                Ok(ByteOrOther::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteOrOther, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(ByteOrOther::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ByteOrOther, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(ByteOrOther::Other)
            }
        }
        d.deserialize_any(V)
    }
}
