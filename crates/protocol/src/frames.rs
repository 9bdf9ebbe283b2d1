//! Frames split by direction: [`ClientFrame`] (client → server) and [`ServerFrame`]
//! (server → client). On the wire each is `{"type": "<type>", "payload": {...}}`, with an optional
//! top-level `requestId` carried by [`crate::Frame`].
//!
//! Sealed envelopes (`message.message`) are kept as raw JSON ([`RawValue`]) from decode to encode, so a
//! server that only forwards them never re-serializes them.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ClientId, ConversationId, DeviceId, GroupId, MessageId, QuestionId, RequestId};
use crate::public_key::PublicKeyField;
use crate::ErrorType;

/// An empty payload, `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `register`: claim an id and publish an ML-KEM public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Register {
    /// The id to register.
    pub client_id: ClientId,
    /// The ML-KEM-768 encapsulation key (1184 bytes).
    pub public_key: PublicKeyField,
    /// Proof of identity. Kept raw: original clients send other algorithms (`ml-dsa`), which make
    /// the registration unverified rather than invalid. Parse with [`Register::verification`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Box<RawValue>>,
    /// *ext*: base64 Ed25519 signature by the identity key over `"lattice/v1/kem-key" ‖ publicKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_signature: Option<String>,
    /// *ext*: register as a linked device of `clientId` (absent: the id's implicit primary
    /// device, exactly as before devices existed). See docs/protocol.md, "Devices".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DevicePart>,
    /// *ext*: register as a *link relay*: the throwaway id a new device links from. The server
    /// never lists it (`discover`, presence, `request_public_key` for others), binds nothing for
    /// it, lets it send only `lattice-link` envelopes to one target id, and closes it after
    /// [`crate::limits::LINK_RELAY_TTL_SECS`]. Absent (original clients): `false`. An original
    /// server ignores it and registers the id as usual, so linking still works there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_relay: bool,
}

/// *ext*: the device part of a `register`. The registration's `verification` then carries the
/// identity key in `serializedPublicKey`, the *device* registration statement in
/// `serializedMessage` and the **device key's** signature over it in `serializedSignedData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePart {
    /// The device, chosen by it; never [`crate::PRIMARY_DEVICE`].
    pub device_id: DeviceId,
    /// Base64 Ed25519 device key (32 bytes).
    pub device_key: String,
    /// Base64 signature of the identity key over `"lattice-device-v1" ‖ lp(clientId) ‖
    /// lp(deviceId) ‖ deviceKey` (64 bytes).
    pub certificate: String,
    /// A signed device list to store before the device is checked against the id's list (how
    /// a newly linked device brings the list that names it). An exact copy of the stored list is
    /// ignored; an older or different one of the same counter is `STALE_DEVICE_LIST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_list: Option<SignedDeviceList>,
}

/// *ext*: an id's device list, signed by its identity key over `"lattice-device-list-v1" ‖
/// lp(clientId) ‖ counter (u64 BE) ‖ count (u8) ‖ (lp(deviceId) ‖ deviceKey)…`, entries in the
/// order given. The implicit primary device is never listed: it always exists (its key is the
/// identity key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedDeviceList {
    /// Grows with every new list; the server keeps only a higher one.
    pub counter: u64,
    /// The linked devices, at most [`crate::limits::MAX_DEVICES_PER_ID`] − 1, ids distinct.
    pub devices: Vec<DeviceEntry>,
    /// Base64 Ed25519 signature by the identity key (64 bytes).
    pub signature: String,
}

/// *ext*: one linked device of a [`SignedDeviceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEntry {
    /// The device.
    pub device_id: DeviceId,
    /// Base64 Ed25519 device key (32 bytes).
    pub device_key: String,
}

/// *ext*: `device_list_upload`: replace the sender's id's device list by a newer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceListUpload {
    /// The new list; its counter must be higher than the stored one's.
    pub device_list: SignedDeviceList,
}

/// *ext*: `device_list_upload` answer: the list is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceListStored {
    /// The stored list's counter.
    pub counter: u64,
    /// Linked devices on it (the primary not counted).
    pub devices: u32,
}

/// *ext*: one MLS leaf as the delivery service routes to it: a device of a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leaf {
    /// The member.
    pub client_id: ClientId,
    /// Its device ([`crate::PRIMARY_DEVICE`] for the implicit one).
    pub device_id: DeviceId,
}

/// *ext*: one device's KeyPackage in a `key_package_fetch` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKeyPackage {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// The KeyPackage, base64.
    pub key_package: String,
    /// Whether it is that device's last-resort KeyPackage.
    pub last_resort: bool,
}

impl Register {
    /// The `verification` object if present and shaped as the protocol says (`None` if absent;
    /// `Some(Err)` if present but not an object with a string `algorithm`).
    pub fn verification(&self) -> Option<Result<Verification, serde_json::Error>> {
        self.verification
            .as_ref()
            .map(|raw| serde_json::from_str(raw.get()))
    }
}

/// The `verification` object of `register`, in the original shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// `"ed25519"` for Lattice identities; anything else registers unverified.
    pub algorithm: String,
    /// Base64 identity key.
    #[serde(default)]
    pub serialized_public_key: Option<String>,
    /// Base64 statement (`"lattice/v1/register" ‖ nonce ‖ lp(clientId) ‖ publicKey`).
    #[serde(default)]
    pub serialized_message: Option<String>,
    /// Base64 signature over the statement.
    #[serde(default)]
    pub serialized_signed_data: Option<String>,
}

/// `discover` request. Original clients send `{}`: the first page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discover {
    /// *ext*: continue after this id (the `cursor` of the previous answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<ClientId>,
}

/// `request_public_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPublicKey {
    /// Whose key.
    pub target_id: ClientId,
}

/// `message` from a client: a sealed envelope for `targetId`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    /// The recipient.
    pub target_id: ClientId,
    /// The sealed envelope, forwarded verbatim.
    pub message: Box<RawValue>,
    /// *ext*: sender-chosen id; when present the sender gets a `message_ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

/// `peer_response`: an answer to a `server_question`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerResponse {
    /// The question answered.
    pub question_id: QuestionId,
    /// The answer: a string (text, or the chosen option), or a boolean for `confirm`.
    pub response: serde_json::Value,
}

/// `ack` *ext*: the recipient stored the message; the server may forget it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The acknowledged message.
    pub message_id: MessageId,
    /// *ext*: the sender of the acknowledged message (the delivered frame's `fromId`). Message ids
    /// are chosen by senders, so only (sender, messageId) names one message; without it the server
    /// forgets the message only when no other sender used the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_id: Option<ClientId>,
}

/// `register` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    /// Always `true` (failures are `error` frames).
    pub success: bool,
    /// The registered id.
    pub client_id: ClientId,
    /// *ext*: whether the registration proved an identity key.
    #[serde(default)]
    pub verified: bool,
    /// *ext*: the device registered, when the `register` had a device part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
}

/// `challenge` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Base64 of 32 random bytes, single use.
    pub nonce: String,
}

/// `discover` answer: one page of online ids, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// Registered online ids after the request's `cursor` (the requester's own id included), at
    /// most [`crate::limits::MAX_DISCOVER_PEERS`].
    pub peers: Vec<ClientId>,
    /// *ext*: more ids follow; ask again with `cursor`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// *ext*: the last id of this page, present when `more` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<ClientId>,
}

/// `public_key_response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyResponse {
    /// Whose key.
    pub peer_id: ClientId,
    /// The ML-KEM-768 key, as a byte array.
    pub public_key: PublicKeyField,
    /// *ext*: base64 Ed25519 identity key of a verified peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_key: Option<String>,
    /// *ext*: base64 signature of the identity key over the KEM key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_signature: Option<String>,
    /// *ext*: the peer's current signed device list, when it has one: check every MLS leaf of
    /// the peer against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_list: Option<SignedDeviceList>,
}

/// `message` delivered to a recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// The sealed envelope, verbatim.
    pub message: Box<RawValue>,
    /// The sender's registered id, set by the server.
    pub from_id: ClientId,
    /// When the server accepted the message, unix milliseconds.
    pub timestamp: u64,
    /// *ext*: the sender's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

/// Delivery state in a `message_ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Handed to the recipient's live connection.
    Delivered,
    /// Stored in the recipient's mailbox until it comes online.
    Queued,
}

/// `message_ack` *ext*.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAck {
    /// The sender's message id.
    pub message_id: MessageId,
    /// The recipient.
    pub target_id: ClientId,
    /// Delivered or queued.
    pub status: AckStatus,
}

/// `peer_connected` / `peer_disconnected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPresence {
    /// The peer.
    pub peer_id: ClientId,
}

/// How a question wants to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    /// Free text.
    Text,
    /// One of `options`.
    Choice,
    /// Yes or no.
    Confirm,
    /// A kind this version does not know; answer as text.
    #[serde(other)]
    Other,
}

/// The `question` object of a `server_question`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// What is asked.
    pub text: String,
    /// *ext*: the answer control (absent = text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<QuestionKind>,
    /// *ext*: the choices of a `choice` question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
}

impl Question {
    /// A free-text question.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            kind: Some(QuestionKind::Text),
            options: None,
        }
    }
    /// A choice among `options`.
    pub fn choice(text: impl Into<String>, options: Vec<String>) -> Self {
        Self {
            text: text.into(),
            kind: Some(QuestionKind::Choice),
            options: Some(options),
        }
    }
    /// A yes/no question.
    pub fn confirm(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            kind: Some(QuestionKind::Confirm),
            options: None,
        }
    }
}

/// `server_question`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerQuestion {
    /// Answer with this id in `peer_response`.
    pub question_id: QuestionId,
    /// The question.
    pub question: Question,
    /// *ext*: shared by the rounds of one conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// *ext*: 1 for the first question of a conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPayload {
    /// The error code.
    pub error_type: ErrorType,
    /// A readable sentence.
    pub details: String,
    /// ISO-8601 time of the error.
    pub timestamp: String,
    /// *ext*: the request this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// *ext*: with `STALE_EPOCH` / `FUTURE_EPOCH`, the group's epoch at the server now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

// ---- MLS delivery service (ext) ----------------------------------------------------------------
// The server stores and forwards MLS bytes; it reads only their clear framing (group, epoch, whether
// a Commit), never their content. Byte fields are standard padded
// base64. See docs/protocol.md, "MLS delivery service".

/// `key_package_upload` *ext*: add one-time KeyPackages to the sender's stock and/or replace its
/// last-resort KeyPackage. Verified ids only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPackageUpload {
    /// One-time KeyPackages (each handed out once), at most
    /// [`crate::limits::MAX_KEY_PACKAGE_UPLOAD`], each at most
    /// [`crate::limits::MAX_KEY_PACKAGE_BYTES`] decoded.
    #[serde(default)]
    pub key_packages: Vec<String>,
    /// A last-resort KeyPackage: handed out, never consumed, when the stock is empty. Replaces
    /// the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<String>,
}

/// `key_package_fetch` *ext*: take one KeyPackage of `clientId` (to add it to a group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPackageFetch {
    /// Whose KeyPackage.
    pub client_id: ClientId,
    /// *ext*: take one KeyPackage of **every** device of `clientId` (answered in `devices`).
    /// Without it (older clients), only the primary device's, as before devices existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_devices: bool,
}

/// `group_commit` *ext*: an MLS Commit for `groupId` made in `epoch`, the Welcome for the members
/// it adds, and the member list it results in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCommit {
    /// The group. A group the server does not know is created by a Commit for epoch 0, whose
    /// sender is then its only member before the Commit.
    pub group_id: GroupId,
    /// The epoch the Commit was made in; it must be the group's current epoch.
    pub epoch: u64,
    /// The Commit, for every member before it (removed members included) but the sender.
    pub commit: String,
    /// The Welcome, for the members the Commit adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<String>,
    /// Every member after the Commit (the sender included unless it leaves), at most
    /// [`crate::limits::MAX_GROUP_MEMBERS`].
    pub members: Vec<ClientId>,
    /// The sender's id for this Commit: resending the same Commit (same id) after a lost answer
    /// is answered `group_commit` again instead of `STALE_EPOCH`.
    pub message_id: MessageId,
    /// *ext*: every leaf (member device) after the Commit, at most
    /// [`crate::limits::MAX_GROUP_MEMBERS`]. Absent (older clients): members that stay keep their
    /// leaves, added members get their primary device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<Vec<Leaf>>,
}

/// `group_message` *ext*: an MLS message that is not a Commit (an application message or a
/// proposal) for every other member of `groupId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMessage {
    /// The group.
    pub group_id: GroupId,
    /// The MLS message.
    pub message: String,
    /// The sender's id for it (the server assigns one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

/// `key_package_upload` answer *ext*: the sender's stock after the upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPackagesStored {
    /// One-time KeyPackages in stock.
    pub stock: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub last_resort: bool,
}

/// `blob_token` answer *ext*: a short-lived bearer token that lets this verified id create
/// transfers in the server's blob store over HTTP (`POST /blobs`, see docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobToken {
    /// The token (random, base64url); sent as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Milliseconds it stays valid.
    pub expires_in_ms: u64,
}

/// `key_package_fetch` answer *ext*.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPackageFound {
    /// Whose KeyPackage.
    pub client_id: ClientId,
    /// The KeyPackage, base64. The server checked only its size: validate it (signature,
    /// suite, identity binding against the pinned key) before use.
    pub key_package: String,
    /// Whether it is the owner's last-resort KeyPackage (the stock was empty).
    pub last_resort: bool,
    /// *ext*: with `allDevices`, one KeyPackage per device that has one (the top-level fields
    /// repeat the first entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceKeyPackage>>,
}

/// `key_packages_low` *ext*: sent to an online owner when a fetch left its stock under
/// [`crate::limits::KEY_PACKAGE_LOW_STOCK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPackagesLow {
    /// One-time KeyPackages left.
    pub stock: u32,
}

/// `group_commit` answer *ext*: the Commit won its epoch and every copy is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCommitAccepted {
    /// The group.
    pub group_id: GroupId,
    /// The group's epoch now (the Commit's epoch + 1): merge the pending Commit.
    pub epoch: u64,
    /// The Commit's `messageId`.
    pub message_id: MessageId,
}

/// `group_message` answer *ext*: every copy is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMessageAccepted {
    /// The group.
    pub group_id: GroupId,
    /// The message's id (the sender's, or the one the server assigned).
    pub message_id: MessageId,
    /// How many members it was stored for.
    pub recipients: u32,
}

/// What a frame enum needs so [`crate::Frame`] can encode and decode it.
pub trait FrameBody: Sized {
    /// Every `type` this direction knows.
    const TYPES: &'static [&'static str];
    /// This frame's `type`.
    fn type_name(&self) -> &'static str;
    /// Writes the `"payload"` entry.
    ///
    /// # Errors
    /// Whatever the serializer reports.
    fn serialize_payload<S: SerializeMap>(&self, map: &mut S) -> Result<(), S::Error>;
    /// Builds a frame from its `type` and raw payload; `Ok(None)` for an unknown type.
    ///
    /// # Errors
    /// The payload does not have the shape of `ty`.
    fn from_parts(ty: &str, payload: &str) -> Result<Option<Self>, serde_json::Error>;
    /// Deserializes the payload of a frame of type `ty` straight from `d` (the single-pass path);
    /// `Ok(None)` for an unknown type (the value is skipped).
    ///
    /// # Errors
    /// The payload does not have the shape of `ty`.
    fn deserialize_payload<'de, D: serde::Deserializer<'de>>(
        ty: &str,
        d: D,
    ) -> Result<Option<Self>, D::Error>;
}

macro_rules! frame_enum {
    ($(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $variant:ident($payload:ty) = $tag:literal, )* }) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub enum $name {
            $( $(#[$vm])* $variant($payload), )*
        }

        impl FrameBody for $name {
            const TYPES: &'static [&'static str] = &[$($tag),*];
            fn type_name(&self) -> &'static str {
                match self { $( Self::$variant(_) => $tag, )* }
            }
            fn serialize_payload<S: SerializeMap>(&self, map: &mut S) -> Result<(), S::Error> {
                match self { $( Self::$variant(p) => map.serialize_entry("payload", p), )* }
            }
            fn from_parts(ty: &str, payload: &str) -> Result<Option<Self>, serde_json::Error> {
                match ty {
                    $( $tag => serde_json::from_str::<$payload>(payload).map(|p| Some(Self::$variant(p))), )*
                    _ => Ok(None),
                }
            }
            fn deserialize_payload<'de, D: serde::Deserializer<'de>>(
                ty: &str,
                d: D,
            ) -> Result<Option<Self>, D::Error> {
                match ty {
                    $( $tag => <$payload as Deserialize>::deserialize(d).map(|p| Some(Self::$variant(p))), )*
                    _ => serde::de::IgnoredAny::deserialize(d).map(|_| None),
                }
            }
        }
    };
}

frame_enum! {
    /// Frames a client sends.
    ClientFrame {
        /// `register`.
        Register(Register) = "register",
        /// `challenge` *ext*: ask for a registration nonce.
        Challenge(Empty) = "challenge",
        /// `discover`: list online peers and subscribe to presence.
        Discover(Discover) = "discover",
        /// `request_public_key`.
        RequestPublicKey(RequestPublicKey) = "request_public_key",
        /// `message`.
        Message(SendMessage) = "message",
        /// `peer_response`.
        PeerResponse(PeerResponse) = "peer_response",
        /// `debug_question`: start the demo conversation.
        DebugQuestion(Empty) = "debug_question",
        /// `ack` *ext*.
        Ack(Ack) = "ack",
        /// `key_package_upload` *ext*.
        KeyPackageUpload(KeyPackageUpload) = "key_package_upload",
        /// `key_package_fetch` *ext*.
        KeyPackageFetch(KeyPackageFetch) = "key_package_fetch",
        /// `group_commit` *ext*.
        GroupCommit(GroupCommit) = "group_commit",
        /// `group_message` *ext*.
        GroupMessage(GroupMessage) = "group_message",
        /// `blob_token` *ext*: ask for a token to create blob transfers.
        BlobToken(Empty) = "blob_token",
        /// `device_list_upload` *ext*.
        DeviceListUpload(DeviceListUpload) = "device_list_upload",
    }
}

frame_enum! {
    /// Frames the server sends.
    ServerFrame {
        /// `register` success.
        Registered(Registered) = "register",
        /// `challenge` nonce.
        Challenge(Challenge) = "challenge",
        /// `discover` result.
        Peers(Peers) = "discover",
        /// `public_key_response`.
        PublicKey(PublicKeyResponse) = "public_key_response",
        /// `message` delivered.
        Message(Delivered) = "message",
        /// `message_ack` *ext*.
        MessageAck(MessageAck) = "message_ack",
        /// `peer_connected` *ext*.
        PeerConnected(PeerPresence) = "peer_connected",
        /// `peer_disconnected`.
        PeerDisconnected(PeerPresence) = "peer_disconnected",
        /// `server_question`.
        ServerQuestion(ServerQuestion) = "server_question",
        /// `error`.
        Error(ErrorPayload) = "error",
        /// `key_package_upload` answer *ext*.
        KeyPackagesStored(KeyPackagesStored) = "key_package_upload",
        /// `key_package_fetch` answer *ext*.
        KeyPackage(KeyPackageFound) = "key_package_fetch",
        /// `key_packages_low` *ext*.
        KeyPackagesLow(KeyPackagesLow) = "key_packages_low",
        /// `group_commit` answer *ext*.
        GroupCommitAccepted(GroupCommitAccepted) = "group_commit",
        /// `group_message` answer *ext*.
        GroupMessageAccepted(GroupMessageAccepted) = "group_message",
        /// `blob_token` answer *ext*.
        BlobToken(BlobToken) = "blob_token",
        /// `device_list_upload` answer *ext*.
        DeviceListStored(DeviceListStored) = "device_list_upload",
    }
}

impl ServerFrame {
    /// An `error` frame stamped with `at`.
    pub fn error(
        error_type: ErrorType,
        details: impl Into<String>,
        at: std::time::SystemTime,
        request_id: Option<RequestId>,
    ) -> Self {
        Self::Error(ErrorPayload {
            error_type,
            details: details.into(),
            timestamp: crate::iso8601(at),
            request_id,
            current_epoch: None,
        })
    }
}
