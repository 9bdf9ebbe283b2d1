//! Unit-test fixtures: one peer's components wired as the handle wires them, with the normal lane
//! read by the test (playing the server) and frames fed in through the router.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use lattice_crypto::Identity;
use lattice_protocol::{
    decode_client, encode, ClientFrame, ClientId, Delivered, Frame, PublicKeyField,
    PublicKeyResponse, RequestId, ServerFrame,
};
use tokio::sync::mpsc;

use crate::events::{record, ConnectionState, Dispatcher, PeerEvent};
use crate::history::{History, NoHistory};
use crate::inbox::Inbox;
use crate::link::Link;
use crate::linking::Linking;
use crate::outbox::{Outbox, Sender};
use crate::requests::Requests;
use crate::router::Router;
use crate::sync::lock;
use crate::trust::Trust;
use crate::{defaults, MemoryKeyStore, MemoryReplayStore};

pub(crate) fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

pub(crate) fn identity() -> Arc<Identity> {
    Arc::new(Identity::generate(&mut rand_core::OsRng))
}

/// What the server says about `peer` owning `identity` (`signed`: a Lattice peer).
pub(crate) fn key_response(
    peer: &ClientId,
    identity: &Identity,
    signed: bool,
) -> PublicKeyResponse {
    let b64 = base64::engine::general_purpose::STANDARD;
    PublicKeyResponse {
        peer_id: peer.clone(),
        public_key: PublicKeyField::Bytes(identity.kem_public_key().as_bytes().to_vec()),
        identity_key: signed.then(|| b64.encode(identity.identity_public_key().as_bytes())),
        key_signature: signed.then(|| b64.encode(identity.key_signature())),
        device_list: None,
    }
}

/// One peer's components.
pub(crate) struct Kit {
    pub(crate) me: ClientId,
    pub(crate) identity: Arc<Identity>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) link: Arc<Link>,
    pub(crate) requests: Arc<Requests>,
    pub(crate) trust: Arc<Trust>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) router: Router,
    pub(crate) linking: Arc<Linking>,
    pub(crate) store: Arc<MemoryKeyStore>,
    /// The normal lane, as the server would read it.
    pub(crate) wire: mpsc::Receiver<String>,
    /// The inbox's receive queue, as the router fills it.
    pub(crate) received_tx: mpsc::Sender<Delivered>,
    pub(crate) received_rx: Option<mpsc::Receiver<Delivered>>,
    pub(crate) events: Arc<Mutex<Vec<PeerEvent>>>,
}

impl Kit {
    /// `name`'s components, connected (state `Connected`, socket 1 registered).
    pub(crate) fn new(name: &str) -> Self {
        Self::with_identity(name, identity())
    }

    pub(crate) fn with_identity(name: &str, identity: Arc<Identity>) -> Self {
        let me = id(name);
        let dispatcher = Dispatcher::new(defaults::EVENT_CAPACITY);
        let events = record(&dispatcher);
        let link = Arc::new(Link::new(me.clone(), 64, Arc::clone(&dispatcher)));
        let wire = link.take_outbound().unwrap();
        let epoch = link.opened(mpsc::channel(1).0);
        link.registered(epoch, true);
        link.set_state(ConnectionState::Connected);
        lock(&events).clear();
        let requests = Arc::new(Requests::new(
            me.clone(),
            defaults::REQUEST_TIMEOUT,
            Arc::clone(&link),
        ));
        let store = Arc::new(MemoryKeyStore::default());
        let trust = Arc::new(Trust::new(
            me.clone(),
            Arc::clone(&store) as _,
            Arc::clone(&requests),
            Arc::clone(&dispatcher),
        ));
        let history = Arc::new(History::new(me.clone(), Arc::new(NoHistory)));
        let outbox = Arc::new(Outbox::new(
            Sender {
                client_id: me.clone(),
                identity: Some(Arc::clone(&identity)),
            },
            Arc::clone(&trust),
            Arc::clone(&requests),
            Arc::clone(&link),
            Arc::clone(&history),
        ));
        let inbox = Arc::new(Inbox::new(
            me.clone(),
            Some(Arc::clone(&identity)),
            Arc::clone(&trust),
            Arc::clone(&link),
            Arc::clone(&dispatcher),
            Arc::new(MemoryReplayStore::default()),
            history,
        ));
        let linking = Arc::new(Linking::new(
            me.clone(),
            Some(Arc::clone(&identity)),
            identity.identity_public_key(),
            Arc::clone(&link),
            Arc::clone(&requests),
            Arc::clone(&dispatcher),
            Arc::clone(&trust),
        ));
        let router = Router::new(
            me.clone(),
            Arc::clone(&dispatcher),
            Arc::clone(&requests),
            Arc::clone(&outbox),
            Arc::clone(&trust),
            None,
            Arc::clone(&linking),
        );
        let (received_tx, received_rx) = mpsc::channel(defaults::RECEIVE_QUEUE);
        Self {
            me,
            identity,
            dispatcher,
            link,
            requests,
            trust,
            outbox,
            inbox,
            router,
            linking,
            store,
            wire,
            received_tx,
            received_rx: Some(received_rx),
            events,
        }
    }

    /// The next frame this peer sent, waiting for it.
    pub(crate) async fn sent(&mut self) -> Frame<ClientFrame> {
        let text = self.wire.recv().await.unwrap();
        decode_client(&text).unwrap()
    }

    /// The next frame this peer sent, if one is queued.
    pub(crate) fn try_sent(&mut self) -> Option<Frame<ClientFrame>> {
        self.wire
            .try_recv()
            .ok()
            .map(|t| decode_client(&t).unwrap())
    }

    /// Feeds a frame from the server through the router.
    pub(crate) fn serve(&self, body: ServerFrame, request_id: Option<RequestId>) {
        let text = encode(&Frame::with_request_id(body, request_id));
        self.router.handle(&text, &self.received_tx);
    }

    /// Answers the next `request_public_key` this peer sends with `resp`.
    pub(crate) async fn answer_key_request(&mut self, resp: PublicKeyResponse) {
        let frame = self.sent().await;
        assert!(
            matches!(frame.body, ClientFrame::RequestPublicKey(_)),
            "{:?}",
            frame.body
        );
        self.serve(ServerFrame::PublicKey(resp), frame.request_id);
    }

    /// The events raised so far, taken.
    pub(crate) fn take_events(&self) -> Vec<PeerEvent> {
        std::mem::take(&mut *lock(&self.events))
    }
}
