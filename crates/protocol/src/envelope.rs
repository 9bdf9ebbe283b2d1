//! The sealed envelope object carried in `message.message`, and the `lattice-v1` inner plaintext.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `{"algorithm", "serializedCipherText", "serializedEncryptedData"}`: base64 fields as the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// `"ml-kem-aes"` or `"lattice-v1"`.
    pub algorithm: String,
    /// Base64 KEM ciphertext.
    pub serialized_cipher_text: String,
    /// Base64 `nonce ‖ ciphertext ‖ tag`.
    pub serialized_encrypted_data: String,
}

impl Envelope {
    /// Builds an envelope from raw bytes.
    pub fn from_bytes(algorithm: &str, cipher_text: &[u8], encrypted_data: &[u8]) -> Self {
        Self {
            algorithm: algorithm.to_owned(),
            serialized_cipher_text: B64.encode(cipher_text),
            serialized_encrypted_data: B64.encode(encrypted_data),
        }
    }

    /// Decodes both base64 fields.
    ///
    /// # Errors
    /// Either field is not standard padded base64.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), base64::DecodeError> {
        Ok((
            B64.decode(&self.serialized_cipher_text)?,
            B64.decode(&self.serialized_encrypted_data)?,
        ))
    }
}

/// *ext*: the `algorithm` of a device-linking envelope (docs/mls.md, "Linking by a short code").
/// The only envelopes a link relay (`register` with `linkRelay`) may send; the server checks this
/// field and nothing else (it cannot read the rest).
pub const LINK_ALGORITHM: &str = "lattice-link";

/// The `algorithm` of an [`MlsEnvelope`].
pub const MLS_ALGORITHM: &str = "mls";

/// What an [`MlsEnvelope`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlsKind {
    /// A Commit that won `epoch`: process it before anything of a later epoch.
    Commit,
    /// A Welcome into the group at `epoch`.
    Welcome,
    /// Any other MLS message of the group (application message or proposal).
    Message,
}

/// The envelope the delivery service puts in each `message` frame of a group:
/// `{"algorithm":"mls","kind","groupId","epoch","data"}`. It travels like any envelope (mailbox,
/// `ack`); the server builds it around the sender's bytes, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MlsEnvelope {
    /// Always [`MLS_ALGORITHM`].
    pub algorithm: String,
    /// What `data` is.
    pub kind: MlsKind,
    /// The group.
    pub group_id: crate::GroupId,
    /// For a Commit the epoch it was made in; for a Welcome the epoch it joins; absent for
    /// other messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The MLS message, base64, as the sender gave it.
    pub data: String,
}

/// The UTF-8 JSON plaintext inside a `lattice-v1` envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InnerMessage {
    /// Format version, 1.
    pub v: u32,
    /// `"text"` (receipts and files reuse the shape with other kinds).
    pub kind: String,
    /// Must equal the outer frame's `messageId`.
    pub message_id: MessageId,
    /// The text.
    pub body: String,
    /// Sender's clock, unix milliseconds.
    pub sent_at: u64,
    /// Base64 Ed25519 signature (see `docs/protocol.md`).
    pub sig: String,
}
