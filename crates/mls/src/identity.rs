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

use lattice_crypto::{
    lp, IdentityKeyPair, IdentityPublicKey, IDENTITY_PUBLIC_KEY_LEN, SIGNATURE_LEN,
};
use lattice_protocol::ClientId;
use openmls::prelude::{BasicCredential, Credential, CredentialType};

use crate::limits::{BINDING_LABEL, UNPINNED};
use crate::MlsError;

/// Where the caller's pinned identity keys come from (the peer's key store, the directory's
/// verified bindings). The engine asks it about every member it is about to trust.
pub trait IdentityPins {
    /// The identity key pinned for `client_id`, or `None` if the id is unknown (which refuses
    /// the member: an unknown id is not trusted by default).
    fn pinned_identity(&self, client_id: &ClientId) -> Option<IdentityPublicKey>;
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
}

/// The statement the identity key signs.
fn binding_statement(client_id: &ClientId, mls_signature_key: &[u8]) -> Result<Vec<u8>, MlsError> {
    let mut out = BINDING_LABEL.to_vec();
    lp(&mut out, client_id.as_str().as_bytes()).map_err(|e| MlsError::op("binding", e))?;
    lp(&mut out, mls_signature_key).map_err(|e| MlsError::op("binding", e))?;
    Ok(out)
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
    signature: [u8; SIGNATURE_LEN],
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
    if rest.len() != len + IDENTITY_PUBLIC_KEY_LEN + SIGNATURE_LEN {
        return Err(refuse("?", "credential has the wrong length"));
    }
    let (id, rest) = rest.split_at(len);
    let (key, sig) = rest.split_at(IDENTITY_PUBLIC_KEY_LEN);
    let id = std::str::from_utf8(id).map_err(|_| refuse("?", "client id is not UTF-8"))?;
    let client_id = ClientId::new(id).map_err(|_| refuse(id, "invalid client id"))?;
    let identity_key =
        IdentityPublicKey::from_bytes(key).map_err(|_| refuse(id, "invalid identity key"))?;
    let signature: [u8; SIGNATURE_LEN] = sig
        .try_into()
        .map_err(|_| refuse(id, "credential has the wrong length"))?;
    Ok(Claimed {
        client_id,
        identity_key,
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
    let statement = binding_statement(&c.client_id, mls_signature_key)?;
    c.identity_key
        .verify(&statement, &c.signature)
        .map_err(|_| refuse(id, "binding signature does not verify"))?;
    Ok(MemberIdentity {
        client_id: c.client_id,
        identity_key: c.identity_key,
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
