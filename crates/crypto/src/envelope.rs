//! The algorithm-independent envelope shape.

/// An encrypted envelope as bytes: the JSON fields `serializedCipherText` and
/// `serializedEncryptedData` before base64. The `algorithm` field names the module that made it
/// ([`ml_kem_aes::ALGORITHM`](crate::ml_kem_aes::ALGORITHM) or
/// [`lattice_v1::ALGORITHM`](crate::lattice_v1::ALGORITHM)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// The 1088-byte ML-KEM-768 ciphertext.
    pub cipher_text: Vec<u8>,
    /// AES-256-GCM nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes).
    pub encrypted_data: Vec<u8>,
}
