//! What a sending peer heard, for the crash tests of the peer and of `lattice-chat` (which
//! includes this file with `#[path]`): recorded by an event handler, not the event stream (which
//! drops events when its reader lags), so every acknowledgement is counted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lattice_peer::{MessagingPeer, PeerEvent};
use lattice_protocol::MessageId;

/// The ids the server acknowledged (`delivered` or `queued`).
pub type Acked = Arc<Mutex<HashSet<MessageId>>>;
/// How many times the peer registered (the first connection and every reconnect).
pub type Registrations = Arc<Mutex<u32>>;
/// Every `MessageFailed`, as "id: error".
pub type Failed = Arc<Mutex<Vec<String>>>;

/// Starts recording `peer`'s acknowledgements, registrations and failed messages.
pub fn record_sender(peer: &MessagingPeer) -> (Acked, Registrations, Failed) {
    let acked: Acked = Arc::default();
    let registrations: Registrations = Arc::default();
    let failed: Failed = Arc::default();
    let (a, r, f) = (
        Arc::clone(&acked),
        Arc::clone(&registrations),
        Arc::clone(&failed),
    );
    // Dropping the handle keeps the handler registered for the peer's life.
    let _ = peer.on_event(move |e| match e {
        PeerEvent::MessageAck(ack) => {
            a.lock().unwrap().insert(ack.message_id.clone());
        }
        PeerEvent::Registered { .. } => *r.lock().unwrap() += 1,
        PeerEvent::MessageFailed {
            message_id, error, ..
        } => f.lock().unwrap().push(format!("{message_id}: {error}")),
        _ => {}
    });
    (acked, registrations, failed)
}
