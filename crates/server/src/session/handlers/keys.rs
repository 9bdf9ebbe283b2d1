//! `request_public_key`: the key of an online peer, or of a known verified identity from the
//! directory (so a message can be sealed for a peer that is offline).

use base64::Engine as _;
use lattice_protocol::{PublicKeyResponse, RequestPublicKey, ServerFrame};
use tracing::warn;

use super::Core;
use crate::session::error::HandlerError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Core {
    pub(super) async fn on_request_public_key(
        &mut self,
        r: RequestPublicKey,
    ) -> Result<ServerFrame, HandlerError> {
        let online = match (self.state.hub.get(&r.target_id), &self.state.node) {
            // A link relay is not listed: nobody looks it up (nor could it be bound).
            (Some(e), _) if e.link_relay => return Err(HandlerError::PeerNotFound(r.target_id)),
            (Some(e), _) => Some(crate::node::peer_keys(&e)),
            // Online on another node: the keys it registered there.
            (None, Some(node)) => match node.presence.keys(&r.target_id).await {
                Ok(Some((_, keys))) if keys.link_relay => {
                    return Err(HandlerError::PeerNotFound(r.target_id))
                }
                Ok(found) => found.map(|(_, keys)| keys),
                Err(e) => {
                    warn!(error = %e, "presence lookup failed");
                    return Err(HandlerError::ClusterUnavailable);
                }
            },
            (None, None) => None,
        };
        // Contacts check every MLS leaf of the id against its signed list.
        let device_list = self.device_list(&r.target_id).await?;
        let body = if let Some(k) = online {
            PublicKeyResponse {
                peer_id: r.target_id,
                public_key: k.public_key.into(),
                identity_key: k.identity_key.map(|k| B64.encode(k)),
                key_signature: k.key_signature.as_ref().map(|s| B64.encode(s)),
                device_list,
            }
        } else {
            match self.binding_of(&r.target_id).await? {
                Some(b) => PublicKeyResponse {
                    peer_id: r.target_id,
                    public_key: b.kem_public_key.into(),
                    identity_key: Some(B64.encode(b.identity_key)),
                    key_signature: Some(B64.encode(b.key_signature)),
                    device_list,
                },
                None => return Err(HandlerError::PeerNotFound(r.target_id)),
            }
        };
        Ok(ServerFrame::PublicKey(body))
    }
}
