//! `blob_token`: a short-lived token a verified id shows (with its id) to create transfers in the
//! blob store over HTTP. The WebSocket session is where the server knows who the peer is; the
//! token carries that to the HTTP request without a second proof. On a node of several the token
//! is in Redis, so any node accepts it.

use std::sync::Arc;

use lattice_protocol::{BlobToken, ServerFrame};
use tracing::warn;

use super::Core;
use crate::hub::PeerEntry;
use crate::limits::BLOB_TOKEN_TTL;
use crate::session::error::HandlerError;

impl Core {
    pub(super) async fn on_blob_token(
        &mut self,
        peer: &Arc<PeerEntry>,
    ) -> Result<ServerFrame, HandlerError> {
        if !peer.verified {
            return Err(HandlerError::VerificationRequired("blob_token"));
        }
        let token = self
            .state
            .blob_tokens
            .issue(&peer.id, BLOB_TOKEN_TTL, crate::state::unix_ms())
            .await
            .map_err(|e| {
                warn!(peer = %peer.id, error = %e, "blob token not stored");
                HandlerError::ClusterUnavailable
            })?;
        Ok(ServerFrame::BlobToken(BlobToken {
            token,
            expires_in_ms: u64::try_from(BLOB_TOKEN_TTL.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}
