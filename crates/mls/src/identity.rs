//! Identity binding: the MLS credential of a client carries its Lattice client id, its Lattice
//! identity key and that key's signature over the MLS signature key.
//!
//! The Lattice identity is an Ed25519 key pinned per id (TOFU, like `keySignature` binds the KEM
//! key). MLS authenticates leaves with their own signature key, which a device generates; the
//! binding is what makes "leaf signed by key K" mean "sent by client id X": the identity key of X
//! signs `lattice/v1/mls-credential ‖ lp(client id) ‖ lp(K)`. A verifier accepts a leaf only when
//! the identity key in its credential is the one the caller pinned for that id *and* that key's
//! signature over the leaf's actual signature key verifies.
//!
//! Credential wire format (the `identity` of an MLS basic credential):
//! `u16 BE len ‖ client id (UTF-8) ‖ identity key (32) ‖ binding signature (64)`.
//!
//! **Linked devices** (docs/mls.md, *Multi-device*) hold no identity key: their chain is identity
//! key → device key → MLS signature key. Their credential inserts a device part before the
//! binding signature, `u8 len ‖ device id ‖ device key (32) ‖ certificate (64)`, where the
//! certificate is the identity key's signature over `lattice_crypto::device_certificate_message`
//! and the binding signature is the *device key's*, over
//! `lattice/v1/mls-device-credential ‖ lp(client id) ‖ lp(device id) ‖ lp(K)`. A verifier also
//! asks [`IdentityPins::device_listed`]: a device that is not on the id's signed device list is
//! refused like an unbound credential, so a server cannot add a device (it cannot sign a list).

use lattice_crypto::{
    device_certificate_message, lp, IdentityKeyPair, IdentityPublicKey, IDENTITY_PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
};
use lattice_protocol::ClientId;
use openmls::prelude::{BasicCredential, Credential, CredentialType};

use crate::limits::{BINDING_LABEL, DEVICE_BINDING_LABEL, UNLISTED, UNPINNED};
use crate::MlsError;

/// Where the caller's pinned identity keys come from (the peer's key store, the directory's
/// verified bindings). The engine asks it about every member it is about to trust.
pub trait IdentityPins {
    /// The identity key pinned for `client_id`, or `None` if the id is unknown (which refuses
    /// the member: an unknown id is not trusted by default).
    fn pinned_identity(&self, client_id: &ClientId) -> Option<IdentityPublicKey>;

    /// Whether `device_id` with `device_key` is on the signed device list of `client_id` (the
    /// list checked against the id's pinned identity key by the caller). The default knows no
    /// list, so it refuses every linked device: trusting a device takes a signed list.
    fn device_listed(
        &self,
        client_id: &ClientId,
        device_id: &str,
        device_key: &IdentityPublicKey,
    ) -> bool {
        let _ = (client_id, device_id, device_key);
        false
    }
}

impl<F> IdentityPins for F
where
    F: Fn(&ClientId) -> Option<IdentityPublicKey>,
{
    fn pinned_identity(&self, client_id: &ClientId) -> Option<IdentityPublicKey> {
        self(client_id)
    }
}

/// Who a member is: its Lattice id and identity key (the source of its safety number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberIdentity {
    /// The member's Lattice client id.
    pub client_id: ClientId,
    /// The member's Lattice identity key, as carried (and bound) by its credential.
    pub identity_key: IdentityPublicKey,
    /// The linked device this leaf belongs to; `None` for the id's primary device (the one
    /// holding the identity key).
    pub device_id: Option<String>,
}

/// A linked device's part of a credential: what the identity key certified.
#[derive(Debug, Clone, Copy)]
pub struct DeviceCredential<'a> {
    /// The device id (1–64 characters, as `lattice_protocol::DeviceId`).
    pub device_id: &'a str,
    /// The device key pair (its secret signs the MLS signature key).
    pub device_key: &'a IdentityKeyPair,
    /// The identity key's signature over the device certificate statement.
    pub certificate: &'a [u8; SIGNATURE_LEN],
}

/// The statement the identity key signs.
fn binding_statement(client_id: &ClientId, mls_signature_key: &[u8]) -> Result<Vec<u8>, MlsError> {
    let mut out = BINDING_LABEL.to_vec();
    lp(&mut out, client_id.as_str().as_bytes()).map_err(|e| MlsError::op("binding", e))?;
    lp(&mut out, mls_signature_key).map_err(|e| MlsError::op("binding", e))?;
    Ok(out)
}

fn device_binding_statement(
    client_id: &ClientId,
    device_id: &str,
    mls_signature_key: &[u8],
) -> Result<Vec<u8>, MlsError> {
    let mut out = DEVICE_BINDING_LABEL.to_vec();
    lp(&mut out, client_id.as_str().as_bytes()).map_err(|e| MlsError::op("binding", e))?;
    lp(&mut out, device_id.as_bytes()).map_err(|e| MlsError::op("binding", e))?;
    lp(&mut out, mls_signature_key).map_err(|e| MlsError::op("binding", e))?;
    Ok(out)
}

/// Builds the credential of linked device `device` of `client_id` (whose identity key is
/// `identity_key`) for the MLS signature key `mls_signature_key`: the chain identity key →
/// device key (the certificate) → MLS key (the device key's signature).
///
/// # Errors
/// [`MlsError::Operation`] if an id is too long for its encoding.
pub fn make_device_credential(
    identity_key: &IdentityPublicKey,
    client_id: &ClientId,
    device: &DeviceCredential<'_>,
    mls_signature_key: &[u8],
) -> Result<Credential, MlsError> {
    let statement = device_binding_statement(client_id, device.device_id, mls_signature_key)?;
    let signature = device.device_key.sign(&statement);
    let id = client_id.as_str().as_bytes();
    let id_len = u16::try_from(id.len()).map_err(|_| MlsError::op("credential", "id too long"))?;
    let dev = device.device_id.as_bytes();
    let dev_len =
        u8::try_from(dev.len()).map_err(|_| MlsError::op("credential", "device id too long"))?;
    let mut bytes = Vec::with_capacity(
        2 + id.len()
            + IDENTITY_PUBLIC_KEY_LEN
            + 1
            + dev.len()
            + IDENTITY_PUBLIC_KEY_LEN
            + 2 * SIGNATURE_LEN,
    );
    bytes.extend_from_slice(&id_len.to_be_bytes());
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(identity_key.as_bytes());
    bytes.push(dev_len);
    bytes.extend_from_slice(dev);
    bytes.extend_from_slice(device.device_key.public_key().as_bytes());
    bytes.extend_from_slice(device.certificate);
    bytes.extend_from_slice(&signature);
    Ok(BasicCredential::new(bytes).into())
}

/// Builds the credential of `client_id` for the MLS signature key `mls_signature_key`.
pub(crate) fn make_credential(
    identity: &IdentityKeyPair,
    client_id: &ClientId,
    mls_signature_key: &[u8],
) -> Result<Credential, MlsError> {
    let statement = binding_statement(client_id, mls_signature_key)?;
    let signature = identity.sign(&statement);
    let id = client_id.as_str().as_bytes();
    let id_len = u16::try_from(id.len()).map_err(|_| MlsError::op("credential", "id too long"))?;
    let mut bytes = Vec::with_capacity(2 + id.len() + IDENTITY_PUBLIC_KEY_LEN + SIGNATURE_LEN);
    bytes.extend_from_slice(&id_len.to_be_bytes());
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(identity.public_key().as_bytes());
    bytes.extend_from_slice(&signature);
    Ok(BasicCredential::new(bytes).into())
}

/// The parts of a credential, before any check.
struct Claimed {
    client_id: ClientId,
    identity_key: IdentityPublicKey,
    device: Option<ClaimedDevice>,
    signature: [u8; SIGNATURE_LEN],
}

/// A linked device's part of a credential, before any check.
struct ClaimedDevice {
    device_id: String,
    device_key: IdentityPublicKey,
    certificate: [u8; SIGNATURE_LEN],
}

fn refuse(client_id: &str, reason: &'static str) -> MlsError {
    MlsError::IdentityBinding {
        client_id: client_id.to_owned(),
        reason,
    }
}

fn parse(credential: &Credential) -> Result<Claimed, MlsError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(refuse("?", "not a basic credential"));
    }
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| refuse("?", "not a basic credential"))?;
    let b = basic.identity();
    let (len, rest) = b
        .split_at_checked(2)
        .ok_or(refuse("?", "credential truncated"))?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if rest.len() < len + IDENTITY_PUBLIC_KEY_LEN + SIGNATURE_LEN {
        return Err(refuse("?", "credential has the wrong length"));
    }
    let (id, rest) = rest.split_at(len);
    let (key, rest) = rest.split_at(IDENTITY_PUBLIC_KEY_LEN);
    let id = std::str::from_utf8(id).map_err(|_| refuse("?", "client id is not UTF-8"))?;
    let client_id = ClientId::new(id).map_err(|_| refuse(id, "invalid client id"))?;
    let identity_key =
        IdentityPublicKey::from_bytes(key).map_err(|_| refuse(id, "invalid identity key"))?;
    let (device, sig) = if rest.len() == SIGNATURE_LEN {
        (None, rest)
    } else {
        let wrong = || refuse(id, "credential has the wrong length");
        let (dlen, rest) = rest.split_first().ok_or_else(wrong)?;
        let dlen = usize::from(*dlen);
        if dlen == 0 || rest.len() != dlen + IDENTITY_PUBLIC_KEY_LEN + 2 * SIGNATURE_LEN {
            return Err(wrong());
        }
        let (dev, rest) = rest.split_at(dlen);
        let (dkey, rest) = rest.split_at(IDENTITY_PUBLIC_KEY_LEN);
        let (cert, sig) = rest.split_at(SIGNATURE_LEN);
        let device_id = std::str::from_utf8(dev)
            .ok()
            .filter(|d| lattice_protocol::DeviceId::new(*d).is_ok_and(|d| !d.is_primary()))
            .ok_or(refuse(id, "invalid device id"))?;
        (
            Some(ClaimedDevice {
                device_id: device_id.to_owned(),
                device_key: IdentityPublicKey::from_bytes(dkey)
                    .map_err(|_| refuse(id, "invalid device key"))?,
                certificate: cert.try_into().map_err(|_| wrong())?,
            }),
            sig,
        )
    };
    let signature: [u8; SIGNATURE_LEN] = sig
        .try_into()
        .map_err(|_| refuse(id, "credential has the wrong length"))?;
    Ok(Claimed {
        client_id,
        identity_key,
        device,
        signature,
    })
}

/// Reads the identity a credential claims, without verifying it (for display of members that
/// were verified when they entered the group).
pub(crate) fn claimed_identity(credential: &Credential) -> Result<MemberIdentity, MlsError> {
    let c = parse(credential)?;
    Ok(MemberIdentity {
        client_id: c.client_id,
        identity_key: c.identity_key,
        device_id: c.device.map(|d| d.device_id),
    })
}

/// Verifies that `credential`, used with the MLS signature key `mls_signature_key`, is bound to
/// the identity key `pins` holds for the id it claims.
///
/// # Errors
/// [`MlsError::IdentityBinding`] if the credential is malformed, its id has no pinned key, its
/// identity key is not the pinned one, or the binding signature does not verify.
pub(crate) fn verify_binding(
    credential: &Credential,
    mls_signature_key: &[u8],
    pins: &dyn IdentityPins,
) -> Result<MemberIdentity, MlsError> {
    let c = parse(credential)?;
    let id = c.client_id.as_str();
    let pinned = pins
        .pinned_identity(&c.client_id)
        .ok_or(refuse(id, UNPINNED))?;
    if pinned != c.identity_key {
        return Err(refuse(id, "identity key differs from the pinned one"));
    }
    let device_id = match &c.device {
        None => {
            let statement = binding_statement(&c.client_id, mls_signature_key)?;
            c.identity_key
                .verify(&statement, &c.signature)
                .map_err(|_| refuse(id, "binding signature does not verify"))?;
            None
        }
        Some(d) => {
            let cert = device_certificate_message(id, &d.device_id, d.device_key.as_bytes())
                .map_err(|e| MlsError::op("binding", e))?;
            c.identity_key
                .verify(&cert, &d.certificate)
                .map_err(|_| refuse(id, "device certificate does not verify"))?;
            if !pins.device_listed(&c.client_id, &d.device_id, &d.device_key) {
                return Err(refuse(id, UNLISTED));
            }
            let statement =
                device_binding_statement(&c.client_id, &d.device_id, mls_signature_key)?;
            d.device_key
                .verify(&statement, &c.signature)
                .map_err(|_| refuse(id, "binding signature does not verify"))?;
            Some(d.device_id.clone())
        }
    };
    Ok(MemberIdentity {
        client_id: c.client_id,
        identity_key: c.identity_key,
        device_id,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_core::OsRng;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    #[test]
    fn a_binding_verifies_only_for_its_key_id_and_pin() {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let other = IdentityKeyPair::generate(&mut OsRng);
        let mls_key = [7u8; 32];
        let cred = make_credential(&alice, &id("alice"), &mls_key).unwrap();
        let pin = alice.public_key();
        let pins = move |c: &ClientId| (c.as_str() == "alice").then_some(pin);

        let who = verify_binding(&cred, &mls_key, &pins).unwrap();
        assert_eq!(who.client_id, id("alice"));
        assert_eq!(who.identity_key, alice.public_key());
        // Another MLS key under the same credential: the signature is over the key.
        assert!(verify_binding(&cred, &[8u8; 32], &pins).is_err());
        // A pin for another key, or none.
        let wrong = move |_: &ClientId| Some(other.public_key());
        assert!(verify_binding(&cred, &mls_key, &wrong).is_err());
        assert!(verify_binding(&cred, &mls_key, &|_: &ClientId| None).is_err());
    }

    /// Pins for alice whose device list names `listed` (device id, key).
    struct ListPins {
        identity: IdentityPublicKey,
        listed: Vec<(String, IdentityPublicKey)>,
    }

    impl IdentityPins for ListPins {
        fn pinned_identity(&self, c: &ClientId) -> Option<IdentityPublicKey> {
            (c.as_str() == "alice").then_some(self.identity)
        }
        fn device_listed(&self, c: &ClientId, d: &str, k: &IdentityPublicKey) -> bool {
            c.as_str() == "alice" && self.listed.iter().any(|(id, key)| id == d && key == k)
        }
    }

    fn certify(identity: &IdentityKeyPair, device: &str, key: &IdentityKeyPair) -> [u8; 64] {
        identity.sign(
            &device_certificate_message("alice", device, key.public_key().as_bytes()).unwrap(),
        )
    }

    #[test]
    fn a_device_credential_verifies_through_the_chain_and_the_device_list_only() {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let laptop = IdentityKeyPair::generate(&mut OsRng);
        let cert = certify(&alice, "laptop", &laptop);
        let mls_key = [7u8; 32];
        let dev = DeviceCredential {
            device_id: "laptop",
            device_key: &laptop,
            certificate: &cert,
        };
        let cred =
            make_device_credential(&alice.public_key(), &id("alice"), &dev, &mls_key).unwrap();
        let listed = ListPins {
            identity: alice.public_key(),
            listed: vec![("laptop".into(), laptop.public_key())],
        };
        let who = verify_binding(&cred, &mls_key, &listed).unwrap();
        assert_eq!(who.device_id.as_deref(), Some("laptop"));
        assert_eq!(
            claimed_identity(&cred).unwrap().device_id.as_deref(),
            Some("laptop")
        );
        // Signed by the device key over this MLS key only.
        assert!(verify_binding(&cred, &[8u8; 32], &listed).is_err());
        // A device the server added alone: certified or not, it is not on the signed list.
        let unlisted = ListPins {
            identity: alice.public_key(),
            listed: Vec::new(),
        };
        let err = verify_binding(&cred, &mls_key, &unlisted).unwrap_err();
        assert!(err.to_string().contains("device list"), "{err}");
        // The default pins know no device list: refused too.
        let pin = alice.public_key();
        let closure = move |c: &ClientId| (c.as_str() == "alice").then_some(pin);
        assert!(verify_binding(&cred, &mls_key, &closure).is_err());
        // A device certified by another identity key (a server-made "device" of alice).
        let mallory = IdentityKeyPair::generate(&mut OsRng);
        let forged_cert = certify(&mallory, "laptop", &laptop);
        let forged = DeviceCredential {
            certificate: &forged_cert,
            ..dev
        };
        let cred =
            make_device_credential(&alice.public_key(), &id("alice"), &forged, &mls_key).unwrap();
        let err = verify_binding(&cred, &mls_key, &listed).unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        // Listed under another key: refused.
        let other = ListPins {
            identity: alice.public_key(),
            listed: vec![("laptop".into(), mallory.public_key())],
        };
        let cred =
            make_device_credential(&alice.public_key(), &id("alice"), &dev, &mls_key).unwrap();
        assert!(verify_binding(&cred, &mls_key, &other).is_err());
        // The primary form still verifies, with no device.
        let primary = make_credential(&alice, &id("alice"), &mls_key).unwrap();
        assert_eq!(
            verify_binding(&primary, &mls_key, &listed)
                .unwrap()
                .device_id,
            None
        );
    }

    #[test]
    fn malformed_device_credentials_are_errors_not_panics() {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let laptop = IdentityKeyPair::generate(&mut OsRng);
        let cert = certify(&alice, "laptop", &laptop);
        let dev = DeviceCredential {
            device_id: "laptop",
            device_key: &laptop,
            certificate: &cert,
        };
        let cred =
            make_device_credential(&alice.public_key(), &id("alice"), &dev, &[7u8; 32]).unwrap();
        let bytes = BasicCredential::try_from(cred).unwrap().identity().to_vec();
        for cut in 0..bytes.len() {
            let c: Credential = BasicCredential::new(bytes[..cut].to_vec()).into();
            // A cut that happens to leave a well-formed primary credential still fails its
            // signature, never panics.
            let _ = claimed_identity(&c);
        }
        let dev_at = 2 + 5 + 32;
        for (at, value) in [(dev_at, 0u8), (dev_at, 0xff), (dev_at + 1, b'/')] {
            let mut b = bytes.clone();
            b[at] = value;
            let c: Credential = BasicCredential::new(b).into();
            assert!(claimed_identity(&c).is_err(), "byte {at} = {value}");
        }
        let primary = make_device_credential(
            &alice.public_key(),
            &id("alice"),
            &DeviceCredential {
                device_id: "primary",
                ..dev
            },
            &[7u8; 32],
        )
        .unwrap();
        assert!(claimed_identity(&primary).is_err(), "primary is reserved");
    }

    #[test]
    fn malformed_credentials_are_errors_not_panics() {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let cred = make_credential(&alice, &id("alice"), &[7u8; 32]).unwrap();
        let bytes = BasicCredential::try_from(cred).unwrap().identity().to_vec();
        for cut in 0..bytes.len() {
            let c: Credential = BasicCredential::new(bytes[..cut].to_vec()).into();
            assert!(
                claimed_identity(&c).is_err(),
                "truncated at {cut} was accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let c: Credential = BasicCredential::new(longer).into();
        assert!(claimed_identity(&c).is_err());
        let mut bad_len = bytes;
        bad_len[0] = 0xff;
        let c: Credential = BasicCredential::new(bad_len).into();
        assert!(claimed_identity(&c).is_err());
    }
}
