//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_core::{CryptoRng, RngCore};

/// A reproducible RNG for tests (never for real keys).
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    STANDARD.decode(text).expect("valid base64")
}

pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("valid hex")
}

/// The `ml-kem-aes` known-answer vector produced by the original JavaScript library.
pub fn ml_kem_aes_vector() -> serde_json::Value {
    serde_json::from_str(include_str!("../vectors/ml-kem-aes.json")).expect("vector JSON")
}

/// An "RNG" that hands out exactly the given bytes, in order, and panics when they run out.
/// Lets a test check which bytes a function draws and in which order.
pub struct ReplayRng {
    bytes: Vec<u8>,
    pos: usize,
}

impl ReplayRng {
    pub fn new(chunks: &[&[u8]]) -> Self {
        Self {
            bytes: chunks.concat(),
            pos: 0,
        }
    }

    pub fn is_exhausted(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

impl RngCore for ReplayRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let end = self.pos + dest.len();
        assert!(end <= self.bytes.len(), "ReplayRng exhausted");
        dest.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ReplayRng {}
