//! `discover`: one page of online ids; it also subscribes the connection to presence notices.

use std::sync::atomic::Ordering;

use lattice_protocol::limits::MAX_DISCOVER_PEERS;
use lattice_protocol::{Discover, Peers, ServerFrame};

use super::Core;
use crate::hub::PeerEntry;

impl Core {
    /// One page of online ids, at most [`MAX_DISCOVER_PEERS`], so the answer stays within
    /// `MAX_DISCOVER_ANSWER_BYTES` however many peers are online. A plain `discover` (original
    /// clients) gets the first page; `more` and `cursor` say how to ask for the next.
    pub(super) fn on_discover(&mut self, peer: &PeerEntry, d: &Discover) -> ServerFrame {
        peer.subscribed.store(true, Ordering::Release);
        let (peers, more) = self
            .state
            .hub
            .online_page(d.cursor.as_ref(), MAX_DISCOVER_PEERS);
        let cursor = if more { peers.last().cloned() } else { None };
        ServerFrame::Peers(Peers {
            peers,
            more,
            cursor,
        })
    }
}
