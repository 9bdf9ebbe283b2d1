//! `request_public_key`: the key of an online peer, or of a known verified identity from the
//! directory (so a message can be sealed for a peer that is offline).

use base64::Engine as _;
use lattice_protocol::{PublicKeyResponse, RequestPublicKey, ServerFrame};
use tracing::warn;

use super::Core;
use crate::session::error::HandlerError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Core {
    pub(super) fn on_request_public_key(
        &mut self,
        r: RequestPublicKey,
    ) -> Result<ServerFrame, HandlerError> {
        let body = if let Some(e) = self.state.hub.get(&r.target_id) {
            PublicKeyResponse {
                peer_id: r.target_id,
                public_key: e.public_key.to_vec().into(),
                identity_key: e.identity_key.map(|k| B64.encode(k)),
                key_signature: e.key_signature.as_ref().map(|s| B64.encode(s)),
            }
        } else {
            match self.state.directory.get(&r.target_id) {
                Ok(Some(b)) => PublicKeyResponse {
                    peer_id: r.target_id,
                    public_key: b.kem_public_key.into(),
                    identity_key: Some(B64.encode(b.identity_key)),
                    key_signature: Some(B64.encode(b.key_signature)),
                },
                Ok(None) => return Err(HandlerError::PeerNotFound(r.target_id)),
                Err(e) => {
                    warn!(error = %e, "directory lookup failed");
                    return Err(HandlerError::DirectoryUnavailable);
                }
            }
        };
        Ok(ServerFrame::PublicKey(body))
    }
}
