//! `peer_response` (an answer to a server question) and `debug_question` (the demo).

use lattice_protocol::{PeerResponse, ServerFrame};

use super::Core;
use crate::hub::PeerEntry;
use crate::questions::AnswerError;
use crate::session::error::HandlerError;

impl Core {
    /// Records an answer; a multi-round conversation's next question comes back with no
    /// `requestId` (it is the server's, not an answer to the client's request).
    pub(super) async fn on_peer_response(
        &mut self,
        peer: &PeerEntry,
        r: &PeerResponse,
    ) -> Result<Option<ServerFrame>, HandlerError> {
        match self
            .state
            .questions
            .answer(&peer.id, &r.question_id, &r.response)
        {
            Ok(Some(next)) => {
                self.reply(ServerFrame::ServerQuestion(next), None);
                Ok(None)
            }
            Ok(None) => Ok(None),
            // On a node of several an admin question is in Redis, asked from any node.
            Err(AnswerError::Unknown(q)) => match self.state.node.clone() {
                Some(node) => Box::pin(self.on_peer_response_cluster(&node, peer, r)).await,
                None => Err(HandlerError::UnknownQuestion(q)),
            },
            Err(AnswerError::Invalid(details)) => Err(HandlerError::InvalidAnswer(details)),
        }
    }

    /// Starts a demo conversation (bounded per peer).
    pub(super) fn on_debug_question(
        &mut self,
        peer: &PeerEntry,
    ) -> Result<ServerFrame, HandlerError> {
        self.state
            .questions
            .start_demo(&peer.id)
            .map(ServerFrame::ServerQuestion)
            .map_err(|e| HandlerError::DemoRefused(e.to_string()))
    }
}
