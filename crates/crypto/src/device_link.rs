//! Linking a new device to an identity: a one-time short code, SPAKE2 (RFC 9382) over it, explicit
//! key confirmation, and the bundle the first device hands over sealed under the agreed key.
//!
//! The protocol (see `docs/mls.md`, *Multi-device*) has two roles. The **new device** shows a
//! [`LinkCode`] and starts ([`NewDeviceLink::start`]: SPAKE2 side A); the **first device**, a
//! device already holding the identity, answers once the user typed the code
//! ([`FirstDeviceLink::respond`]: SPAKE2 side B, plus its confirmation tag). The new device checks
//! that tag and answers with its own ([`NewDeviceLink::confirm`]); the first device checks it
//! ([`FirstDeviceLink::confirm`]) and, once the user approved the new device's fingerprint, seals
//! the bundle ([`ConfirmedLink::seal`]) that the new device opens ([`ConfirmedLink::open`]).
//!
//! Every value both sides see goes into one transcript — the id being linked, the relay id the
//! new device uses while linking, its device id and device key, the run id and both SPAKE2
//! messages — and the keys are derived from the SPAKE2 key *and* that transcript (HKDF-SHA256), so
//! a message replayed from another run, or a device key swapped by the relay, makes the
//! confirmation fail. Each state is consumed by its step: one code gives one attempt.
//!
//! **Caveat**: `spake2` (RustCrypto PAKEs) has had no formal security review. This module is one
//! of two gates; the first device's user approving the new device's fingerprint is the other, and
//! it is required (`docs/security.md`).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use data_encoding::{Encoding, Specification};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity as PakeIdentity, Password, Spake2};
use zeroize::{Zeroize, Zeroizing};

use crate::statements::lp_named;
use crate::{CryptoError, IdentityPublicKey};

/// Characters of a [`LinkCode`]: 8 Crockford base32 characters, 40 bits.
pub const LINK_CODE_LEN: usize = 8;

/// Bytes of randomness in a [`LinkCode`] (40 bits: an active attacker gets one guess per run, a
/// 2^-40 chance; a passive one learns nothing from the PAKE messages).
const LINK_CODE_BYTES: usize = 5;

/// Bytes of a run id: random per linking attempt, so two runs never share a transcript.
pub const LINK_RUN_ID_LEN: usize = 16;

/// Bytes of a SPAKE2 message on Ed25519 (a side byte and a point).
pub const PAKE_MESSAGE_LEN: usize = 33;

/// Bytes of a key-confirmation tag (HMAC-SHA256).
pub const CONFIRMATION_LEN: usize = 32;

/// Largest bundle [`ConfirmedLink::seal`] seals and [`ConfirmedLink::open`] opens: a certificate,
/// the signed device list, and a few thousand contacts' pinned keys fit with room; it bounds what
/// a linking peer can make us decrypt and parse.
pub const MAX_LINK_BUNDLE_LEN: usize = 1024 * 1024;

/// Domain label of the linking transcript.
const TRANSCRIPT_LABEL: &[u8] = b"lattice/v1/device-link";
/// HKDF info of the three keys derived from the SPAKE2 key.
const KEYS_INFO: &[u8] = b"lattice/v1/device-link/keys";
/// Labels of the two confirmation tags (one per direction, so a tag cannot be reflected).
const CONFIRM_FIRST: &[u8] = b"first device";
const CONFIRM_NEW: &[u8] = b"new device";
/// Bytes of a ChaCha20-Poly1305 nonce.
const NONCE_LEN: usize = 12;

/// Crockford base32 (no I, L, O, U; case-insensitive; `I`/`L` read as `1`, `O` as `0`).
fn crockford() -> Result<Encoding, CryptoError> {
    let mut spec = Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    spec.translate.from.push_str("abcdefghjkmnpqrstvwxyzIiLlOo");
    spec.translate.to.push_str("ABCDEFGHJKMNPQRSTVWXYZ111100");
    spec.encoding()
        .map_err(|_| CryptoError::InvalidKey("link code alphabet"))
}

/// The one-time code the new device shows and the user types on the first device. Printed as
/// 8 Crockford base32 characters; parsed case-insensitively, ignoring spaces and dashes.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode(Zeroizing<[u8; LINK_CODE_BYTES]>);

impl LinkCode {
    /// A fresh code from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut b = Zeroizing::new([0u8; LINK_CODE_BYTES]);
        rng.fill_bytes(&mut b[..]);
        Self(b)
    }

    /// Parses a code typed by a user.
    ///
    /// # Errors
    /// [`CryptoError::InvalidLinkCode`] unless it is 8 Crockford base32 characters (after
    /// removing spaces and dashes).
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        let cleaned: Zeroizing<String> =
            Zeroizing::new(s.chars().filter(|c| !matches!(c, ' ' | '-')).collect());
        if cleaned.len() != LINK_CODE_LEN || !cleaned.is_ascii() {
            return Err(CryptoError::InvalidLinkCode);
        }
        let decoded = Zeroizing::new(
            crockford()?
                .decode(cleaned.as_bytes())
                .map_err(|_| CryptoError::InvalidLinkCode)?,
        );
        let bytes: [u8; LINK_CODE_BYTES] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::InvalidLinkCode)?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The code as shown to the user (8 characters, upper case).
    ///
    /// # Errors
    /// Never in practice (the alphabet is a constant); typed for the encoder's construction.
    pub fn display(&self) -> Result<Zeroizing<String>, CryptoError> {
        Ok(Zeroizing::new(crockford()?.encode(&self.0[..])))
    }
}

impl core::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LinkCode(<secret>)")
    }
}

/// What both devices agree on before the PAKE: every field goes into the transcript.
#[derive(Debug, Clone, Copy)]
pub struct LinkContext<'a> {
    /// The Lattice id the new device joins.
    pub client_id: &'a str,
    /// The throwaway id the new device is registered under while linking (the relay address).
    pub relay_id: &'a str,
    /// The device id the new device chose.
    pub device_id: &'a str,
    /// The new device's Ed25519 device key (the first device certifies it).
    pub device_key: &'a IdentityPublicKey,
    /// This run's random id.
    pub run_id: &'a [u8; LINK_RUN_ID_LEN],
}

impl LinkContext<'_> {
    fn pake_ids(&self) -> Result<(PakeIdentity, PakeIdentity), CryptoError> {
        let mut a = Vec::new();
        lp_named(&mut a, self.relay_id.as_bytes(), "relay id")?;
        lp_named(&mut a, self.device_id.as_bytes(), "device id")?;
        lp_named(&mut a, self.device_key.as_bytes(), "device key")?;
        let mut b = Vec::new();
        lp_named(&mut b, self.client_id.as_bytes(), "client id")?;
        Ok((PakeIdentity::new(&a), PakeIdentity::new(&b)))
    }

    fn transcript(&self, hello: &[u8], reply: &[u8]) -> Result<[u8; 32], CryptoError> {
        let mut t = TRANSCRIPT_LABEL.to_vec();
        lp_named(&mut t, self.client_id.as_bytes(), "client id")?;
        lp_named(&mut t, self.relay_id.as_bytes(), "relay id")?;
        lp_named(&mut t, self.device_id.as_bytes(), "device id")?;
        lp_named(&mut t, self.device_key.as_bytes(), "device key")?;
        lp_named(&mut t, self.run_id, "run id")?;
        lp_named(&mut t, hello, "pake message")?;
        lp_named(&mut t, reply, "pake message")?;
        Ok(Sha256::digest(&t).into())
    }
}

fn password(code: &LinkCode) -> Password {
    Password::new(&code.0[..])
}

/// The keys both sides derive once SPAKE2 finished.
struct Keys {
    confirm_first: Zeroizing<[u8; 32]>,
    confirm_new: Zeroizing<[u8; 32]>,
    seal: Zeroizing<[u8; 32]>,
    transcript: [u8; 32],
}

impl Keys {
    fn derive(pake_key: &[u8], transcript: [u8; 32]) -> Result<Self, CryptoError> {
        let mut okm = Zeroizing::new([0u8; 96]);
        Hkdf::<Sha256>::new(Some(&transcript), pake_key)
            .expand(KEYS_INFO, &mut okm[..])
            .map_err(|_| CryptoError::InvalidKey("hkdf output length"))?;
        let mut keys = Self {
            confirm_first: Zeroizing::new([0u8; 32]),
            confirm_new: Zeroizing::new([0u8; 32]),
            seal: Zeroizing::new([0u8; 32]),
            transcript,
        };
        keys.confirm_first.copy_from_slice(&okm[..32]);
        keys.confirm_new.copy_from_slice(&okm[32..64]);
        keys.seal.copy_from_slice(&okm[64..]);
        Ok(keys)
    }

    fn mac(&self, key: &[u8; 32], label: &[u8]) -> Result<Hmac<Sha256>, CryptoError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|_| CryptoError::InvalidKey("hmac key"))?;
        mac.update(label);
        mac.update(&self.transcript);
        Ok(mac)
    }

    fn tag(&self, first: bool) -> Result<[u8; CONFIRMATION_LEN], CryptoError> {
        let mac = if first {
            self.mac(&self.confirm_first, CONFIRM_FIRST)?
        } else {
            self.mac(&self.confirm_new, CONFIRM_NEW)?
        };
        Ok(mac.finalize().into_bytes().into())
    }

    /// Checks the other side's tag in constant time.
    fn check(&self, first: bool, tag: &[u8]) -> Result<(), CryptoError> {
        let mac = if first {
            self.mac(&self.confirm_first, CONFIRM_FIRST)?
        } else {
            self.mac(&self.confirm_new, CONFIRM_NEW)?
        };
        mac.verify_slice(tag)
            .map_err(|_| CryptoError::LinkConfirmation)
    }
}

/// The new device's side, between its first message and the first device's answer.
pub struct NewDeviceLink {
    pake: Spake2<Ed25519Group>,
    hello: Vec<u8>,
}

impl core::fmt::Debug for NewDeviceLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NewDeviceLink")
    }
}

impl NewDeviceLink {
    /// Starts a run with `code`: returns the state and the SPAKE2 message to send.
    ///
    /// # Errors
    /// [`CryptoError::FieldTooLong`] if a context field is longer than 65535 bytes.
    pub fn start(
        rng: &mut impl CryptoRngCore,
        code: &LinkCode,
        ctx: &LinkContext<'_>,
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        let (a, b) = ctx.pake_ids()?;
        let (pake, hello) =
            Spake2::<Ed25519Group>::start_a_with_rng(&password(code), &a, &b, &mut *rng);
        Ok((
            Self {
                pake,
                hello: hello.clone(),
            },
            hello,
        ))
    }

    /// Takes the first device's SPAKE2 message and confirmation tag. Consumes the state: a wrong
    /// code, a replayed or tampered message spends this run.
    ///
    /// # Errors
    /// [`CryptoError::LinkConfirmation`] if the tag does not verify (wrong code, another run's
    /// message, a changed context) or the message is malformed.
    pub fn confirm(
        self,
        ctx: &LinkContext<'_>,
        reply: &[u8],
        first_tag: &[u8],
    ) -> Result<(ConfirmedLink, [u8; CONFIRMATION_LEN]), CryptoError> {
        let key = Zeroizing::new(
            self.pake
                .finish(reply)
                .map_err(|_| CryptoError::LinkConfirmation)?,
        );
        let keys = Keys::derive(&key, ctx.transcript(&self.hello, reply)?)?;
        keys.check(true, first_tag)?;
        let tag = keys.tag(false)?;
        Ok((ConfirmedLink { keys }, tag))
    }
}

/// The first device's side, between its answer and the new device's confirmation.
pub struct FirstDeviceLink {
    keys: Keys,
}

impl core::fmt::Debug for FirstDeviceLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FirstDeviceLink")
    }
}

/// What the first device sends back: its SPAKE2 message and its confirmation tag.
#[derive(Debug, Clone)]
pub struct FirstDeviceReply {
    /// SPAKE2 message (side B).
    pub pake: Vec<u8>,
    /// HMAC over the transcript under the first device's confirmation key.
    pub confirmation: [u8; CONFIRMATION_LEN],
}

impl FirstDeviceLink {
    /// Answers the new device's SPAKE2 message `hello` with the code the user typed.
    ///
    /// # Errors
    /// [`CryptoError::LinkConfirmation`] if `hello` is not a side-A SPAKE2 message;
    /// [`CryptoError::FieldTooLong`] if a context field is longer than 65535 bytes.
    pub fn respond(
        rng: &mut impl CryptoRngCore,
        code: &LinkCode,
        ctx: &LinkContext<'_>,
        hello: &[u8],
    ) -> Result<(Self, FirstDeviceReply), CryptoError> {
        let (a, b) = ctx.pake_ids()?;
        let (pake, reply) =
            Spake2::<Ed25519Group>::start_b_with_rng(&password(code), &a, &b, &mut *rng);
        let key = Zeroizing::new(
            pake.finish(hello)
                .map_err(|_| CryptoError::LinkConfirmation)?,
        );
        let keys = Keys::derive(&key, ctx.transcript(hello, &reply)?)?;
        let confirmation = keys.tag(true)?;
        Ok((
            Self { keys },
            FirstDeviceReply {
                pake: reply,
                confirmation,
            },
        ))
    }

    /// Checks the new device's confirmation tag. Consumes the state.
    ///
    /// # Errors
    /// [`CryptoError::LinkConfirmation`] if it does not verify.
    pub fn confirm(self, new_tag: &[u8]) -> Result<ConfirmedLink, CryptoError> {
        self.keys.check(false, new_tag)?;
        Ok(ConfirmedLink { keys: self.keys })
    }
}

/// A run whose keys both sides confirmed: the bundle is sealed and opened under its key.
pub struct ConfirmedLink {
    keys: Keys,
}

impl core::fmt::Debug for ConfirmedLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ConfirmedLink")
    }
}

impl ConfirmedLink {
    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.keys.seal[..]))
    }

    /// Seals `bundle` (first device to new device): `nonce ‖ ciphertext ‖ tag`, the transcript
    /// as associated data.
    ///
    /// # Errors
    /// [`CryptoError::FieldTooLong`] if `bundle` is longer than [`MAX_LINK_BUNDLE_LEN`].
    pub fn seal(
        &self,
        rng: &mut impl CryptoRngCore,
        bundle: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if bundle.len() > MAX_LINK_BUNDLE_LEN {
            return Err(CryptoError::FieldTooLong("link bundle"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: bundle,
                    aad: &self.keys.transcript,
                },
            )
            .map_err(|_| CryptoError::FieldTooLong("link bundle"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a sealed bundle.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] if it is too long, truncated, or does not authenticate.
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() > MAX_LINK_BUNDLE_LEN + NONCE_LEN + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, body) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or(CryptoError::Decrypt)?;
        let mut plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &self.keys.transcript,
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        let out = Zeroizing::new(plain.clone());
        plain.zeroize();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand_core::OsRng;

    use super::*;
    use crate::IdentityKeyPair;

    struct Fixture {
        device_key: IdentityPublicKey,
        run: [u8; LINK_RUN_ID_LEN],
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                device_key: IdentityKeyPair::generate(&mut OsRng).public_key(),
                run: [9; LINK_RUN_ID_LEN],
            }
        }
        fn ctx(&self) -> LinkContext<'_> {
            LinkContext {
                client_id: "alice",
                relay_id: "link-1234",
                device_id: "laptop",
                device_key: &self.device_key,
                run_id: &self.run,
            }
        }
    }

    #[test]
    fn codes_are_eight_crockford_characters_and_parse_leniently() {
        let code = LinkCode::generate(&mut OsRng);
        let shown = code.display().unwrap();
        assert_eq!(shown.len(), LINK_CODE_LEN);
        assert!(shown
            .chars()
            .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
        assert_eq!(LinkCode::parse(&shown).unwrap(), code);
        let lower = shown.to_lowercase();
        let spaced = format!("{}-{}", &lower[..4], &lower[4..]);
        assert_eq!(LinkCode::parse(&spaced).unwrap(), code);
        // Crockford reads I/L as 1 and O as 0.
        assert_eq!(
            LinkCode::parse("OOOOIIII").unwrap(),
            LinkCode::parse("00001111").unwrap()
        );
        for bad in [
            "",
            "1234567",
            "123456789",
            "UUUUUUUU",
            "1234567é",
            "12 34 56",
        ] {
            assert_eq!(
                LinkCode::parse(bad),
                Err(CryptoError::InvalidLinkCode),
                "{bad}"
            );
        }
        assert!(!format!("{code:?}").contains(shown.as_str()));
    }

    /// Runs the whole protocol; `first_code` is what the user typed on the first device.
    fn run(
        f: &Fixture,
        code: &LinkCode,
        first_code: &LinkCode,
    ) -> Result<(ConfirmedLink, ConfirmedLink), CryptoError> {
        let ctx = f.ctx();
        let (new, hello) = NewDeviceLink::start(&mut OsRng, code, &ctx)?;
        let (first, reply) = FirstDeviceLink::respond(&mut OsRng, first_code, &ctx, &hello)?;
        let (new_done, tag) = new.confirm(&ctx, &reply.pake, &reply.confirmation)?;
        let first_done = first.confirm(&tag)?;
        Ok((new_done, first_done))
    }

    #[test]
    fn the_right_code_confirms_both_sides_and_the_bundle_opens() {
        let f = Fixture::new();
        let code = LinkCode::generate(&mut OsRng);
        let (new, first) = run(&f, &code, &code).unwrap();
        let sealed = first.seal(&mut OsRng, b"certificate and pins").unwrap();
        assert_eq!(
            new.open(&sealed).unwrap().as_slice(),
            b"certificate and pins"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(new.open(&tampered).unwrap_err(), CryptoError::Decrypt);
        assert_eq!(new.open(&sealed[..10]).unwrap_err(), CryptoError::Decrypt);
        assert!(first
            .seal(&mut OsRng, &vec![0; MAX_LINK_BUNDLE_LEN + 1])
            .is_err());
    }

    #[test]
    fn a_wrong_code_fails_confirmation_on_the_new_device() {
        let f = Fixture::new();
        let code = LinkCode::generate(&mut OsRng);
        let wrong = LinkCode::generate(&mut OsRng);
        assert_eq!(
            run(&f, &code, &wrong).unwrap_err(),
            CryptoError::LinkConfirmation
        );
    }

    #[test]
    fn a_message_replayed_from_another_run_fails_confirmation() {
        let f = Fixture::new();
        let code = LinkCode::generate(&mut OsRng);
        let ctx = f.ctx();
        // Run 1, recorded by the relay.
        let (_, hello1) = NewDeviceLink::start(&mut OsRng, &code, &ctx).unwrap();
        let (_, reply1) = FirstDeviceLink::respond(&mut OsRng, &code, &ctx, &hello1).unwrap();
        // Run 2 with the same code and context: the old answer is replayed to the new device.
        let (new2, _hello2) = NewDeviceLink::start(&mut OsRng, &code, &ctx).unwrap();
        assert_eq!(
            new2.confirm(&ctx, &reply1.pake, &reply1.confirmation)
                .unwrap_err(),
            CryptoError::LinkConfirmation
        );
    }

    #[test]
    fn a_device_key_swapped_by_the_relay_fails_confirmation() {
        let f = Fixture::new();
        let code = LinkCode::generate(&mut OsRng);
        let ctx = f.ctx();
        let (new, hello) = NewDeviceLink::start(&mut OsRng, &code, &ctx).unwrap();
        let other = IdentityKeyPair::generate(&mut OsRng).public_key();
        let swapped = LinkContext {
            device_key: &other,
            ..ctx
        };
        let (_, reply) = FirstDeviceLink::respond(&mut OsRng, &code, &swapped, &hello).unwrap();
        assert_eq!(
            new.confirm(&ctx, &reply.pake, &reply.confirmation)
                .unwrap_err(),
            CryptoError::LinkConfirmation
        );
    }

    #[test]
    fn malformed_pake_messages_are_errors_not_panics() {
        let f = Fixture::new();
        let code = LinkCode::generate(&mut OsRng);
        let ctx = f.ctx();
        for bad in [&[][..], &[0x41; 10], &[0x41; PAKE_MESSAGE_LEN], &[0x42; 40]] {
            assert!(FirstDeviceLink::respond(&mut OsRng, &code, &ctx, bad).is_err());
            let (new, _) = NewDeviceLink::start(&mut OsRng, &code, &ctx).unwrap();
            assert!(new.confirm(&ctx, bad, &[0; CONFIRMATION_LEN]).is_err());
        }
        // The new device's own message reflected back to it.
        let (new, hello) = NewDeviceLink::start(&mut OsRng, &code, &ctx).unwrap();
        assert!(new.confirm(&ctx, &hello, &[0; CONFIRMATION_LEN]).is_err());
    }

    #[test]
    fn the_first_device_refuses_a_wrong_confirmation_tag() {
        let f = Fixture::new();
        let code = LinkCode::generate(&mut OsRng);
        let ctx = f.ctx();
        let (_, hello) = NewDeviceLink::start(&mut OsRng, &code, &ctx).unwrap();
        let (first, reply) = FirstDeviceLink::respond(&mut OsRng, &code, &ctx, &hello).unwrap();
        // Reflecting the first device's own tag back does not pass (one label per direction).
        assert_eq!(
            first.confirm(&reply.confirmation).unwrap_err(),
            CryptoError::LinkConfirmation
        );
    }
}
