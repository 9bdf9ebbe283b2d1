//! `discover`: one page of online ids; it also subscribes the connection to presence notices.

use std::sync::atomic::Ordering;

use lattice_protocol::limits::MAX_DISCOVER_PEERS;
use lattice_protocol::{Discover, Peers, ServerFrame};

use tracing::warn;

use super::Core;
use crate::hub::PeerEntry;
use crate::session::error::HandlerError;

impl Core {
    /// One page of online ids, at most [`MAX_DISCOVER_PEERS`], so the answer stays within
    /// `MAX_DISCOVER_ANSWER_BYTES` however many peers are online. A plain `discover` (original
    /// clients) gets the first page; `more` and `cursor` say how to ask for the next. On a node
    /// of several the page lists every node's peers (and presence notices come from every node).
    pub(super) async fn on_discover(
        &mut self,
        peer: &PeerEntry,
        d: &Discover,
    ) -> Result<ServerFrame, HandlerError> {
        peer.subscribed.store(true, Ordering::Release);
        let (peers, more) = match &self.state.node {
            Some(node) => node
                .presence
                .online_page(d.cursor.as_ref(), MAX_DISCOVER_PEERS)
                .await
                .map_err(|e| {
                    warn!(error = %e, "presence page failed");
                    HandlerError::ClusterUnavailable
                })?,
            None => self
                .state
                .hub
                .online_page(d.cursor.as_ref(), MAX_DISCOVER_PEERS),
        };
        let cursor = if more { peers.last().cloned() } else { None };
        Ok(ServerFrame::Peers(Peers {
            peers,
            more,
            cursor,
        }))
    }
}
