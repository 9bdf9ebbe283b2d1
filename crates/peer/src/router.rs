//! The router: every frame the server sends goes through [`Router::handle`], which decodes it and
//! hands it to whoever it is for: the waiting request ([`Requests`]), the inbox (a `message`, into
//! its bounded receive queue), the outbox (the verdict on a message we sent), [`Trust`] (presence
//! changes make a cached key stale) and the event stream. It only routes: each destination
//! decides what the frame means.

use std::sync::Arc;

use lattice_protocol::{
    decode_server, ClientId, Delivered, FrameBody as _, RequestId, ServerFrame,
};
use tokio::sync::mpsc;

use crate::events::{Dispatcher, IncomingQuestion, PeerEvent};
use crate::groups::Groups;
use crate::linking::{is_link, Linking};
use crate::outbox::Outbox;
use crate::pending::Routed;
use crate::requests::Requests;
use crate::sanitize::Sanitized;
use crate::trust::Trust;
use crate::wire::server_error;
use crate::PeerError;

/// Routes incoming frames. Holds no state of its own (no lock).
#[derive(Debug, Clone)]
pub(crate) struct Router {
    client_id: ClientId,
    dispatcher: Arc<Dispatcher>,
    requests: Arc<Requests>,
    outbox: Arc<Outbox>,
    trust: Arc<Trust>,
    /// Group messages (`mls` envelopes) and KeyPackage notices go here, when groups are on.
    groups: Option<Arc<Groups>>,
    /// Device-linking envelopes go here.
    linking: Arc<Linking>,
}

impl Router {
    pub(crate) fn new(
        client_id: ClientId,
        dispatcher: Arc<Dispatcher>,
        requests: Arc<Requests>,
        outbox: Arc<Outbox>,
        trust: Arc<Trust>,
        groups: Option<Arc<Groups>>,
        linking: Arc<Linking>,
    ) -> Self {
        Self {
            client_id,
            dispatcher,
            requests,
            outbox,
            trust,
            groups,
            linking,
        }
    }

    /// Decodes a frame from the server and routes it; `message`s go to `received` (the inbox's
    /// queue). Never fails: a bad frame is reported.
    pub(crate) fn handle(&self, text: &str, received: &mpsc::Sender<Delivered>) {
        let frame = match decode_server(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(peer = %self.client_id, error = %Sanitized(&e), "undecodable frame from the server");
                self.dispatcher
                    .emit(PeerEvent::Error(PeerError::Protocol(e.to_string())));
                return;
            }
        };
        let routed = self.requests.route(&frame);
        let request_id = frame.request_id;
        match frame.body {
            // Linking is not a conversation: no downgrade rule applies to it.
            ServerFrame::Message(d) if is_link(&d) => self.linking.deliver(d),
            ServerFrame::Message(d)
                if self
                    .groups
                    .as_ref()
                    .is_some_and(|g| g.refuses_downgrade(&d)) => {}
            ServerFrame::Message(d) if self.groups.is_some() && is_mls(&d) => {
                if let Some(g) = &self.groups {
                    g.deliver(d);
                }
            }
            ServerFrame::KeyPackagesLow(low) => {
                tracing::info!(peer = %self.client_id, stock = low.stock, "KeyPackage stock low");
                if let Some(g) = &self.groups {
                    g.replenish_later();
                }
            }
            ServerFrame::Message(d) => {
                let from = d.from_id.clone();
                if received.try_send(d).is_err() {
                    tracing::warn!(peer = %self.client_id, from = %from, "receive queue full, message dropped unacknowledged");
                    self.dispatcher
                        .emit(PeerEvent::Error(PeerError::ReceiveQueueFull { from }));
                }
            }
            ServerFrame::MessageAck(a) => {
                if let Ok(rid) = RequestId::new(a.message_id.as_str()) {
                    self.outbox.take(&rid);
                }
                self.dispatcher.emit(PeerEvent::MessageAck(a));
            }
            ServerFrame::PeerConnected(p) => {
                // A reconnecting original client comes back with a new KEM key.
                self.trust.forget_key(&p.peer_id);
                self.dispatcher.emit(PeerEvent::PeerConnected(p.peer_id));
            }
            ServerFrame::PeerDisconnected(p) => {
                self.trust.forget_key(&p.peer_id);
                self.dispatcher.emit(PeerEvent::PeerDisconnected(p.peer_id));
            }
            ServerFrame::ServerQuestion(q) => {
                self.dispatcher
                    .emit(PeerEvent::ServerQuestion(IncomingQuestion {
                        question_id: q.question_id,
                        question: q.question,
                        conversation_id: q.conversation_id,
                        round: q.round,
                    }));
            }
            ServerFrame::Error(e) if routed == Routed::Unclaimed => {
                let sent = request_id.as_ref().and_then(|r| self.outbox.take(r));
                match sent {
                    Some((message_id, target)) => self.dispatcher.emit(PeerEvent::MessageFailed {
                        message_id,
                        target,
                        error: server_error(e),
                    }),
                    // An error naming a request this client never sent is not about us: a
                    // server must not pass it off as the answer to something the user did.
                    None if request_id
                        .as_ref()
                        .is_some_and(|r| !self.requests.was_issued(r)) =>
                    {
                        tracing::debug!(peer = %self.client_id, error_type = ?e.error_type, "error for a request this client never sent, ignored");
                    }
                    None => self.dispatcher.emit(PeerEvent::Error(server_error(e))),
                }
            }
            other => {
                if routed == Routed::Unclaimed {
                    tracing::debug!(peer = %self.client_id, frame = other.type_name(), "unclaimed answer ignored");
                }
            }
        }
    }
}

/// Whether a delivered message carries an `mls` envelope (for the group worker).
fn is_mls(d: &Delivered) -> bool {
    #[derive(serde::Deserialize)]
    struct Algo<'a> {
        #[serde(borrow)]
        algorithm: &'a str,
    }
    serde_json::from_str::<Algo<'_>>(d.message.get())
        .is_ok_and(|a| a.algorithm == lattice_protocol::MLS_ALGORITHM)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use lattice_protocol::{Challenge, ErrorType, PeerPresence, Question, ServerQuestion};

    use super::*;
    use crate::testkit::{id, identity, key_response, Kit};

    fn error(rid: Option<&RequestId>) -> ServerFrame {
        ServerFrame::error(
            ErrorType::PeerNotFound,
            "x",
            SystemTime::now(),
            rid.cloned(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn messages_go_to_the_inbox_queue_and_a_full_queue_is_reported() {
        let mut kit = Kit::new("bob");
        let (tx, mut rx) = mpsc::channel(1);
        let d = || {
            ServerFrame::Message(Delivered {
                message: serde_json::value::to_raw_value(&1).unwrap(),
                from_id: id("alice"),
                timestamp: 1,
                message_id: None,
            })
        };
        for _ in 0..2 {
            kit.router.handle(
                &lattice_protocol::encode(&lattice_protocol::Frame::new(d())),
                &tx,
            );
        }
        assert_eq!(rx.try_recv().unwrap().from_id, id("alice"));
        assert!(rx.try_recv().is_err());
        let events = kit.take_events();
        assert!(
            matches!(events.as_slice(), [PeerEvent::Error(PeerError::ReceiveQueueFull { from })] if *from == id("alice"))
        );
        assert!(kit.try_sent().is_none(), "nothing acknowledged");
    }

    #[tokio::test(start_paused = true)]
    async fn presence_forgets_the_cached_key_and_questions_become_events() {
        let kit = Kit::new("bob");
        let alice = id("alice");
        kit.trust
            .check_key(key_response(&alice, &identity(), false))
            .unwrap();
        kit.serve(
            ServerFrame::PeerConnected(PeerPresence {
                peer_id: alice.clone(),
            }),
            None,
        );
        assert!(
            kit.trust.cached_key(&alice).is_none(),
            "it may come back with a new KEM key"
        );
        kit.serve(
            ServerFrame::PeerDisconnected(PeerPresence {
                peer_id: alice.clone(),
            }),
            None,
        );
        let q = ServerQuestion {
            question_id: lattice_protocol::QuestionId::new("q1").unwrap(),
            question: Question::text("name?"),
            conversation_id: None,
            round: Some(1),
        };
        kit.serve(ServerFrame::ServerQuestion(q), None);
        let events = kit.take_events();
        assert!(matches!(&events[0], PeerEvent::PeerConnected(p) if *p == alice));
        assert!(matches!(&events[1], PeerEvent::PeerDisconnected(p) if *p == alice));
        assert!(
            matches!(&events[2], PeerEvent::ServerQuestion(q) if q.question_id.as_str() == "q1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_reported_only_when_they_can_be_about_us() {
        let kit = Kit::new("bob");
        // Never sent by us: ignored.
        let foreign = RequestId::new("not-ours").unwrap();
        kit.serve(error(Some(&foreign)), Some(foreign));
        assert!(kit.take_events().is_empty());
        // Ours (a fire-and-forget frame), and one without any id: reported.
        let ours = kit.requests.issue();
        kit.serve(error(Some(&ours)), Some(ours));
        kit.serve(error(None), None);
        let events = kit.take_events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events
            .iter()
            .all(|e| matches!(e, PeerEvent::Error(PeerError::Server { .. }))));
        // Undecodable: a protocol error, nothing else.
        kit.router.handle("{not json", &kit.received_tx);
        assert!(matches!(
            kit.take_events().as_slice(),
            [PeerEvent::Error(PeerError::Protocol(_))]
        ));
        // An answer nobody waits for: dropped quietly.
        kit.serve(
            ServerFrame::Challenge(Challenge {
                nonce: "AA==".into(),
            }),
            None,
        );
        assert!(kit.take_events().is_empty());
    }
}
