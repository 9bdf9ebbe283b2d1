//! Linking a new device to an id (docs/mls.md, *Multi-device*): both sides of the short-code
//! protocol of [`lattice_crypto::device_link`], carried as ordinary `message` frames whose
//! envelope's `algorithm` is [`LINK_ALGORITHM`].
//!
//! **New device** ([`Linking::start`]): it runs as a throwaway, unbound id (the *relay id*), makes
//! its device key, shows a [`LinkCode`] and sends `hello` (its SPAKE2 message, device id and device
//! key) to the id it joins. **First device** (a device holding the identity key): a `hello` becomes
//! a pending request ([`LinkEvent::Request`]); the user types the code ([`Linking::enter_code`]),
//! which answers with `reply`; the new device checks the first device's confirmation and answers
//! `confirm`; the first device checks it and asks the user to compare the new device's
//! fingerprint ([`LinkEvent::AwaitingApproval`]). Only on approval ([`Linking::approve`]) does it
//! sign the certificate and a device list naming the new device, seal them with the pins in a
//! `bundle` and send it; the new device opens it ([`LinkEvent::Linked`],
//! [`Linking::take_linked`]).
//!
//! One attempt per code: every state is spent by its step, whatever the outcome. Every run
//! expires [`defaults::LINK_CODE_TTL`] after it started; at most
//! [`defaults::MAX_PENDING_LINK_REQUESTS`] requests wait on a first device (the oldest is dropped).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use lattice_crypto::device_link::{
    ConfirmedLink, FirstDeviceLink, LinkCode, LinkContext, NewDeviceLink, CONFIRMATION_LEN,
    LINK_RUN_ID_LEN, PAKE_MESSAGE_LEN,
};
use lattice_crypto::{
    device_certificate_message, device_list_message, Fingerprint, Identity, IdentityKeyPair,
    IdentityPublicKey,
};
use lattice_protocol::{
    ClientFrame, ClientId, Delivered, DeviceEntry, DeviceId, Frame, SendMessage, SignedDeviceList,
};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::events::{Dispatcher, LinkEvent, LinkFailure, PeerEvent};
use crate::keys::KeyStore;
use crate::link::{Lane, Link};
use crate::requests::Requests;
use crate::sanitize::Sanitized;
use crate::sync::lock;
use crate::trust::Trust;
use crate::wire::{new_message_id, B64};
use crate::{defaults, PeerError};

/// The `algorithm` of a linking envelope (defined in `lattice-protocol`: a link relay's server
/// checks it).
pub use lattice_protocol::LINK_ALGORITHM;

/// Format version of the sealed bundle.
const BUNDLE_VERSION: u32 = 1;

/// A linking envelope: `{"algorithm":"lattice-link","run":"<base64 16 bytes>","step":…}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    algorithm: String,
    run: String,
    #[serde(flatten)]
    step: Step,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "step",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
enum Step {
    /// New → first: SPAKE2 side A, and who the new device is.
    Hello {
        client_id: ClientId,
        device_id: DeviceId,
        device_key: String,
        pake: String,
    },
    /// First → new: SPAKE2 side B and the first device's confirmation tag.
    Reply { pake: String, confirmation: String },
    /// New → first: the new device's confirmation tag.
    Confirm { confirmation: String },
    /// First → new: the sealed [`Bundle`].
    Bundle { sealed: String },
    /// Either way: the run is over (a wrong code, a refusal, an expiry).
    Abort,
}

/// What the first device hands over, sealed under the run's key.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    v: u32,
    client_id: ClientId,
    device_id: DeviceId,
    /// Base64 identity-key signature over the device certificate statement.
    certificate: String,
    device_list: SignedDeviceList,
    /// Base64 identity key of the id.
    identity_key: String,
    /// The id's bound ML-KEM public key and its `keySignature` (a device registers with them).
    kem_public_key: String,
    key_signature: String,
    /// The contacts' pinned identity keys, so the new device's first contact is no TOFU.
    contacts: Vec<Contact>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Contact {
    client_id: ClientId,
    identity_key: String,
}

/// What a linked device needs to act as a device of its id, from the bundle.
pub struct LinkedDevice {
    /// The id.
    pub client_id: ClientId,
    /// This device.
    pub device_id: DeviceId,
    /// This device's key (its secret never left this device).
    pub device_key: IdentityKeyPair,
    /// The identity key's certificate over the device key.
    pub certificate: [u8; lattice_crypto::SIGNATURE_LEN],
    /// The signed device list naming this device.
    pub device_list: SignedDeviceList,
    /// The id's identity key.
    pub identity_key: IdentityPublicKey,
    /// The id's bound ML-KEM public key (bytes) and its `keySignature`, for `register`.
    pub kem_public_key: Vec<u8>,
    /// `keySignature` over `kem_public_key`.
    pub key_signature: Vec<u8>,
    /// Contacts' pinned identity keys as the first device had them.
    pub contacts: Vec<(ClientId, IdentityPublicKey)>,
}

impl std::fmt::Debug for LinkedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkedDevice")
            .field("client_id", &self.client_id)
            .field("device_id", &self.device_id)
            .field("contacts", &self.contacts.len())
            .finish_non_exhaustive()
    }
}

impl LinkedDevice {
    /// Checks the chain this device's standing rests on: the certificate is the identity key's
    /// signature over *this* device key, the device list is signed by the same key and names
    /// this device with this key, and the `keySignature` binds the ML-KEM key to it.
    pub(crate) fn verify(&self) -> Result<(), &'static str> {
        if self.device_id.is_primary() {
            return Err("\"primary\" is not a linked device");
        }
        let public = self.device_key.public_key();
        let statement = device_certificate_message(
            self.client_id.as_str(),
            self.device_id.as_str(),
            public.as_bytes(),
        )
        .map_err(|_| "the device id cannot be certified")?;
        self.identity_key
            .verify(&statement, &self.certificate)
            .map_err(|_| "the certificate does not verify under the identity key")?;
        verify_list(&self.client_id, &self.identity_key, &self.device_list)
            .map_err(|_| "the device list is not signed by the identity key")?;
        let listed = self.device_list.devices.iter().any(|d| {
            d.device_id == self.device_id && decode::<32>(&d.device_key) == Some(*public.as_bytes())
        });
        if !listed {
            return Err("the device list does not name this device with its key");
        }
        lattice_crypto::verify_kem_key_signature(
            &self.identity_key,
            &self.kem_public_key,
            &self.key_signature,
        )
        .map_err(|_| "the ML-KEM key is not bound to the identity key")?;
        Ok(())
    }

    /// Pins the contacts' identity keys in `store` (keys already pinned are left alone).
    ///
    /// # Errors
    /// What the store returns.
    pub fn import_pins(&self, store: &dyn KeyStore) -> Result<usize, PeerError> {
        let mut n = 0;
        for (id, key) in &self.contacts {
            if store.pinned(id)?.is_none() {
                store.pin(id, key)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The new device's run.
struct NewRun {
    run: [u8; LINK_RUN_ID_LEN],
    target: ClientId,
    device_id: DeviceId,
    device_key: IdentityKeyPair,
    pake: Option<NewDeviceLink>,
    confirmed: Option<ConfirmedLink>,
    deadline: Instant,
}

enum Phase {
    Code,
    Confirm(FirstDeviceLink),
    Approval(ConfirmedLink),
}

/// A new device's request on the first device.
struct Request {
    relay: ClientId,
    run: [u8; LINK_RUN_ID_LEN],
    device_id: DeviceId,
    device_key: IdentityPublicKey,
    hello: Vec<u8>,
    deadline: Instant,
    phase: Phase,
}

#[derive(Default)]
struct State {
    new_run: Option<NewRun>,
    requests: VecDeque<Request>,
    linked: Option<LinkedDevice>,
    /// The last device list this device signed and published: only a device holding the
    /// identity key signs lists, so a server serving an older one (which might still name a
    /// removed device) is not taken as the base of the next list. Also kept in the key store
    /// ([`KeyStore::own_device_list`]), so that this holds across restarts.
    last_list: Option<SignedDeviceList>,
}

/// Both sides of device linking. Shared (`Arc`) by the handle and the router.
pub(crate) struct Linking {
    client_id: ClientId,
    /// `None` on a linked device: it cannot certify devices nor sign lists, and does not link.
    identity: Option<Arc<Identity>>,
    /// The id's identity key (what device lists are checked against).
    identity_key: IdentityPublicKey,
    link: Arc<Link>,
    requests: Arc<Requests>,
    dispatcher: Arc<Dispatcher>,
    trust: Arc<Trust>,
    /// std Mutex: each step is a short computation, never an await.
    state: Mutex<State>,
}

impl std::fmt::Debug for Linking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linking")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Whether a delivered message is a linking envelope.
pub(crate) fn is_link(d: &Delivered) -> bool {
    #[derive(Deserialize)]
    struct Algo<'a> {
        #[serde(borrow)]
        algorithm: &'a str,
    }
    serde_json::from_str::<Algo<'_>>(d.message.get()).is_ok_and(|a| a.algorithm == LINK_ALGORITHM)
}

fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() > N * 2 + 4 {
        return None;
    }
    B64.decode(s).ok()?.try_into().ok()
}

impl Linking {
    pub(crate) fn new(
        client_id: ClientId,
        identity: Option<Arc<Identity>>,
        identity_key: IdentityPublicKey,
        link: Arc<Link>,
        requests: Arc<Requests>,
        dispatcher: Arc<Dispatcher>,
        trust: Arc<Trust>,
    ) -> Self {
        Self {
            client_id,
            identity,
            identity_key,
            link,
            requests,
            dispatcher,
            trust,
            state: Mutex::new(State::default()),
        }
    }

    /// The identity, or [`PeerError::PrimaryOnly`] on a linked device.
    fn identity(&self, what: &'static str) -> Result<&Arc<Identity>, PeerError> {
        self.identity
            .as_ref()
            .ok_or(PeerError::PrimaryOnly { what })
    }

    fn send(
        &self,
        to: &ClientId,
        run: &[u8; LINK_RUN_ID_LEN],
        step: Step,
    ) -> Result<(), PeerError> {
        let env = Envelope {
            algorithm: LINK_ALGORITHM.to_owned(),
            run: B64.encode(run),
            step,
        };
        let message = serde_json::value::to_raw_value(&env)
            .map_err(|e| PeerError::Protocol(e.to_string()))?;
        let message_id = new_message_id();
        let rid = lattice_protocol::RequestId::new(message_id.as_str())
            .map_err(|e| PeerError::InvalidArgument(e.to_string()))?;
        self.requests.record_issued(rid.clone());
        self.link.send_frame(
            Lane::Normal,
            Frame::with_request_id(
                ClientFrame::Message(SendMessage {
                    target_id: to.clone(),
                    message,
                    message_id: Some(message_id),
                }),
                Some(rid),
            ),
        )
    }

    fn fail(&self, with: &ClientId, reason: LinkFailure) {
        tracing::info!(peer = %self.client_id, with = %with, reason = ?reason, "device linking ended");
        self.dispatcher.emit(PeerEvent::Link(LinkEvent::Failed {
            with: with.clone(),
            reason,
        }));
    }

    /// New device: starts linking to `target` as device `device_id`. Returns the code to show.
    /// A run already under way is abandoned.
    pub(crate) fn start(
        &self,
        target: &ClientId,
        device_id: DeviceId,
    ) -> Result<LinkCode, PeerError> {
        self.identity("linking (a new device links from a throwaway id)")?;
        if device_id.is_primary() {
            return Err(PeerError::InvalidArgument(
                "\"primary\" is reserved for the device holding the identity key".into(),
            ));
        }
        let code = LinkCode::generate(&mut OsRng);
        let device_key = IdentityKeyPair::generate(&mut OsRng);
        let mut run = [0u8; LINK_RUN_ID_LEN];
        OsRng.fill_bytes(&mut run);
        let public = device_key.public_key();
        let ctx = LinkContext {
            client_id: target.as_str(),
            relay_id: self.client_id.as_str(),
            device_id: device_id.as_str(),
            device_key: &public,
            run_id: &run,
        };
        let (pake, hello) = NewDeviceLink::start(&mut OsRng, &code, &ctx)?;
        self.send(
            target,
            &run,
            Step::Hello {
                client_id: target.clone(),
                device_id: device_id.clone(),
                device_key: B64.encode(public.as_bytes()),
                pake: B64.encode(&hello),
            },
        )?;
        lock(&self.state).new_run = Some(NewRun {
            run,
            target: target.clone(),
            device_id,
            device_key,
            pake: Some(pake),
            confirmed: None,
            deadline: Instant::now() + defaults::LINK_CODE_TTL,
        });
        tracing::info!(peer = %self.client_id, to = %target, "device linking started");
        Ok(code)
    }

    /// New device: the device key's fingerprint, to compare with the first device's prompt.
    pub(crate) fn own_device_fingerprint(&self) -> Option<Fingerprint> {
        lock(&self.state)
            .new_run
            .as_ref()
            .map(|r| r.device_key.public_key().fingerprint())
    }

    /// New device: the linked device, once [`LinkEvent::Linked`] was raised.
    pub(crate) fn take_linked(&self) -> Option<LinkedDevice> {
        lock(&self.state).linked.take()
    }

    /// First device: the code the user typed, for the newest request still waiting for one.
    pub(crate) fn enter_code(&self, code: &str) -> Result<ClientId, PeerError> {
        self.identity("approving a new device")?;
        let code = LinkCode::parse(code)?;
        let now = Instant::now();
        let mut st = lock(&self.state);
        st.requests.retain(|r| r.deadline > now);
        let idx = st
            .requests
            .iter()
            .rposition(|r| matches!(r.phase, Phase::Code))
            .ok_or_else(|| {
                PeerError::InvalidArgument("no new device is waiting for a code".into())
            })?;
        let Some(req) = st.requests.get_mut(idx) else {
            return Err(PeerError::InvalidArgument(
                "no new device is waiting".into(),
            ));
        };
        let ctx = LinkContext {
            client_id: self.client_id.as_str(),
            relay_id: req.relay.as_str(),
            device_id: req.device_id.as_str(),
            device_key: &req.device_key,
            run_id: &req.run,
        };
        let relay = req.relay.clone();
        let run = req.run;
        match FirstDeviceLink::respond(&mut OsRng, &code, &ctx, &req.hello) {
            Ok((first, reply)) => {
                req.phase = Phase::Confirm(first);
                drop(st);
                self.send(
                    &relay,
                    &run,
                    Step::Reply {
                        pake: B64.encode(&reply.pake),
                        confirmation: B64.encode(reply.confirmation),
                    },
                )?;
                Ok(relay)
            }
            Err(_) => {
                st.requests.remove(idx);
                drop(st);
                self.fail(&relay, LinkFailure::Malformed);
                Err(PeerError::InvalidArgument(
                    "the new device's message is malformed".into(),
                ))
            }
        }
    }

    /// First device: the user compared the fingerprint and approves (or refuses) `relay`.
    pub(crate) async fn approve(&self, relay: &ClientId, approve: bool) -> Result<(), PeerError> {
        self.identity("approving a new device")?;
        let req = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            let idx = st
                .requests
                .iter()
                .position(|r| &r.relay == relay && matches!(r.phase, Phase::Approval(_)))
                .ok_or_else(|| {
                    PeerError::InvalidArgument(format!("no device of {relay} awaits approval"))
                })?;
            let req = st.requests.remove(idx).ok_or_else(|| {
                PeerError::InvalidArgument(format!("no device of {relay} awaits approval"))
            })?;
            if req.deadline <= now {
                drop(st);
                let _ = self.send(relay, &req.run, Step::Abort);
                self.fail(relay, LinkFailure::Expired);
                return Err(PeerError::InvalidArgument(
                    "the linking code expired".into(),
                ));
            }
            req
        };
        if !approve {
            let sent = self.send(relay, &req.run, Step::Abort);
            self.fail(relay, LinkFailure::Refused);
            return sent;
        }
        let Phase::Approval(confirmed) = &req.phase else {
            return Err(PeerError::InvalidArgument("not awaiting approval".into()));
        };
        let bundle = self.make_bundle(&req).await?;
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&bundle.0).map_err(|e| PeerError::Protocol(e.to_string()))?,
        );
        let sealed = confirmed.seal(&mut OsRng, &plain)?;
        self.publish_list(bundle.1).await?;
        self.send(
            relay,
            &req.run,
            Step::Bundle {
                sealed: B64.encode(sealed),
            },
        )?;
        tracing::info!(peer = %self.client_id, device = %req.device_id, "device linked");
        self.dispatcher.emit(PeerEvent::Link(LinkEvent::Approved {
            device_id: req.device_id,
        }));
        Ok(())
    }

    /// The certificate, the new device list and the pins.
    async fn make_bundle(&self, req: &Request) -> Result<(Bundle, SignedDeviceList), PeerError> {
        let identity = self.identity("approving a new device")?;
        let ik = identity.identity_key();
        let key = req.device_key.as_bytes();
        let certificate = ik.sign(&device_certificate_message(
            self.client_id.as_str(),
            req.device_id.as_str(),
            key,
        )?);
        let current = self.current_device_list().await?;
        let (counter, mut devices) = match current {
            Some(l) => (l.counter, l.devices),
            None => (0, Vec::new()),
        };
        devices.retain(|d| d.device_id != req.device_id);
        if devices.len() + 1 >= lattice_protocol::limits::MAX_DEVICES_PER_ID {
            return Err(PeerError::InvalidArgument(format!(
                "{} already has {} devices, the most one id may have",
                self.client_id,
                lattice_protocol::limits::MAX_DEVICES_PER_ID
            )));
        }
        devices.push(DeviceEntry {
            device_id: req.device_id.clone(),
            device_key: B64.encode(key),
        });
        let list = self.sign_list(counter.saturating_add(1), devices)?;
        let contacts = self
            .trust
            .key_store()
            .pins()?
            .into_iter()
            .take(defaults::MAX_LINK_CONTACTS)
            .map(|(client_id, k)| Contact {
                client_id,
                identity_key: B64.encode(k.as_bytes()),
            })
            .collect();
        Ok((
            Bundle {
                v: BUNDLE_VERSION,
                client_id: self.client_id.clone(),
                device_id: req.device_id.clone(),
                certificate: B64.encode(certificate),
                device_list: list.clone(),
                identity_key: B64.encode(ik.public_key().as_bytes()),
                kem_public_key: B64.encode(identity.kem_public_key().as_bytes()),
                key_signature: B64.encode(identity.key_signature()),
                contacts,
            },
            list,
        ))
    }

    /// Signs a device list of this id.
    fn sign_list(
        &self,
        counter: u64,
        devices: Vec<DeviceEntry>,
    ) -> Result<SignedDeviceList, PeerError> {
        let entries = devices
            .iter()
            .map(|d| {
                decode::<32>(&d.device_key)
                    .map(|k| (d.device_id.as_str(), k))
                    .ok_or_else(|| PeerError::Protocol("a device key is not 32 bytes".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let signature =
            self.identity("signing a device list")?
                .identity_key()
                .sign(&device_list_message(
                    self.client_id.as_str(),
                    counter,
                    &entries,
                )?);
        Ok(SignedDeviceList {
            counter,
            devices,
            signature: B64.encode(signature),
        })
    }

    /// The id's current device list: the newer of the one the server serves and the last one
    /// this device signed (this run's, or the key store's from an earlier run), each checked
    /// against our identity key (the server cannot forge one; a list that does not verify is an
    /// error, never a base).
    async fn current_device_list(&self) -> Result<Option<SignedDeviceList>, PeerError> {
        let resp = self.trust.fetch_key_response(&self.client_id).await?;
        let served = match resp.device_list {
            Some(list) => {
                verify_list(&self.client_id, &self.identity_key, &list)?;
                Some(list)
            }
            None => None,
        };
        let run = lock(&self.state).last_list.clone();
        let kept = self
            .trust
            .key_store()
            .own_device_list()?
            .filter(|l| verify_list(&self.client_id, &self.identity_key, l).is_ok());
        Ok([served, run, kept]
            .into_iter()
            .flatten()
            .max_by_key(|l| l.counter))
    }

    /// Publishes a device list (`device_list_upload`).
    async fn publish_list(&self, list: SignedDeviceList) -> Result<(), PeerError> {
        // Kept before it is published: a list kept but never published is still a sound base
        // (its successor has a higher counter than anything the server holds).
        self.trust.key_store().keep_own_device_list(&list)?;
        lock(&self.state).last_list = Some(list.clone());
        let frame = ClientFrame::DeviceListUpload(lattice_protocol::DeviceListUpload {
            device_list: list.clone(),
        });
        self.requests
            .request(
                Lane::Normal,
                frame,
                "device_list_upload",
                crate::WaitOptions::default(),
            )
            .await?;
        // Taken as our own current list at once: the groups add (or remove) the device's
        // leaves from it, and a list the server serves later is used only if it is newer.
        if let Err(e) = self
            .trust
            .record_devices(&self.client_id, &self.identity_key, &list)
        {
            tracing::warn!(peer = %self.client_id, error = %Sanitized(&e), "own device list not taken");
        }
        Ok(())
    }

    /// First device: removes `device` from the id's device list (the server closes its
    /// connection and drops its mailbox; its MLS leaves stay until a Remove commit).
    pub(crate) async fn remove_device(&self, device: &DeviceId) -> Result<(), PeerError> {
        self.identity("removing a device")?;
        let Some(current) = self.current_device_list().await? else {
            return Err(PeerError::InvalidArgument(format!(
                "{device} is not a device of this id"
            )));
        };
        let before = current.devices.len();
        let devices: Vec<DeviceEntry> = current
            .devices
            .into_iter()
            .filter(|d| &d.device_id != device)
            .collect();
        if devices.len() == before {
            return Err(PeerError::InvalidArgument(format!(
                "{device} is not a device of this id"
            )));
        }
        let list = self.sign_list(current.counter.saturating_add(1), devices)?;
        self.publish_list(list).await
    }

    /// The id's devices (linked ones; the primary is implicit), as the server serves the list.
    pub(crate) async fn devices(&self) -> Result<Vec<DeviceEntry>, PeerError> {
        Ok(self
            .current_device_list()
            .await?
            .map(|l| l.devices)
            .unwrap_or_default())
    }

    /// A linking envelope arrived: acknowledge it (nothing in it is worth a redelivery) and run
    /// the step.
    pub(crate) fn deliver(&self, d: Delivered) {
        if let Some(mid) = &d.message_id {
            self.link.ack(&d.from_id, mid);
        }
        let env: Envelope = match serde_json::from_str(d.message.get()) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(peer = %self.client_id, from = %d.from_id, error = %Sanitized(&e), "malformed linking envelope dropped");
                return;
            }
        };
        let Some(run) = decode::<LINK_RUN_ID_LEN>(&env.run) else {
            tracing::debug!(peer = %self.client_id, from = %d.from_id, "linking envelope without a run id dropped");
            return;
        };
        match env.step {
            Step::Hello {
                client_id,
                device_id,
                device_key,
                pake,
            } => self.on_hello(&d.from_id, run, &client_id, device_id, &device_key, &pake),
            Step::Reply { pake, confirmation } => {
                self.on_reply(&d.from_id, run, &pake, &confirmation);
            }
            Step::Confirm { confirmation } => self.on_confirm(&d.from_id, run, &confirmation),
            Step::Bundle { sealed } => self.on_bundle(&d.from_id, run, &sealed),
            Step::Abort => self.on_abort(&d.from_id, run),
        }
    }

    fn on_hello(
        &self,
        from: &ClientId,
        run: [u8; LINK_RUN_ID_LEN],
        client_id: &ClientId,
        device_id: DeviceId,
        device_key: &str,
        pake: &str,
    ) {
        // Only the device holding the identity key can certify; a hello for another id, a
        // reserved device id, or a malformed key is dropped (and every hello on a linked device).
        if self.identity.is_none() {
            tracing::debug!(peer = %self.client_id, from = %from, "linking hello on a linked device dropped");
            return;
        }
        let key = decode::<32>(device_key).and_then(|k| IdentityPublicKey::from_bytes(&k).ok());
        let hello = decode::<PAKE_MESSAGE_LEN>(pake);
        let (Some(device_key), Some(hello)) = (key, hello) else {
            tracing::debug!(peer = %self.client_id, from = %from, "malformed linking hello dropped");
            return;
        };
        if client_id != &self.client_id || device_id.is_primary() {
            tracing::debug!(peer = %self.client_id, from = %from, "linking hello for another id dropped");
            return;
        }
        let now = Instant::now();
        {
            let mut st = lock(&self.state);
            st.requests.retain(|r| r.deadline > now && &r.relay != from);
            while st.requests.len() >= defaults::MAX_PENDING_LINK_REQUESTS {
                st.requests.pop_front();
            }
            st.requests.push_back(Request {
                relay: from.clone(),
                run,
                device_id: device_id.clone(),
                device_key,
                hello: hello.to_vec(),
                deadline: now + defaults::LINK_CODE_TTL,
                phase: Phase::Code,
            });
        }
        tracing::info!(peer = %self.client_id, relay = %from, device = %device_id, "a new device asks to be linked");
        self.dispatcher.emit(PeerEvent::Link(LinkEvent::Request {
            relay_id: from.clone(),
            device_id,
        }));
    }

    /// New device: the first device's answer. Spends the run whatever comes.
    fn on_reply(&self, from: &ClientId, run: [u8; LINK_RUN_ID_LEN], pake: &str, tag: &str) {
        let mut st = lock(&self.state);
        let Some(r) = st.new_run.as_mut() else { return };
        if &r.target != from || r.run != run {
            return;
        }
        let Some(pake_state) = r.pake.take() else {
            // A second reply (a replay): the one attempt is already spent.
            drop(st);
            tracing::debug!(peer = %self.client_id, from = %from, "second linking reply refused");
            return;
        };
        let expired = Instant::now() >= r.deadline;
        let public = r.device_key.public_key();
        let ctx = LinkContext {
            client_id: r.target.as_str(),
            relay_id: self.client_id.as_str(),
            device_id: r.device_id.as_str(),
            device_key: &public,
            run_id: &r.run,
        };
        let outcome = match (
            expired,
            B64.decode(pake)
                .ok()
                .filter(|p| p.len() == PAKE_MESSAGE_LEN),
            decode::<CONFIRMATION_LEN>(tag),
        ) {
            (true, _, _) => Err(LinkFailure::Expired),
            (false, Some(p), Some(t)) => pake_state
                .confirm(&ctx, &p, &t)
                .map_err(|_| LinkFailure::WrongCode),
            _ => Err(LinkFailure::Malformed),
        };
        match outcome {
            Ok((confirmed, my_tag)) => {
                r.confirmed = Some(confirmed);
                drop(st);
                if let Err(e) = self.send(
                    from,
                    &run,
                    Step::Confirm {
                        confirmation: B64.encode(my_tag),
                    },
                ) {
                    tracing::warn!(peer = %self.client_id, error = %Sanitized(&e), "linking confirmation not sent");
                }
            }
            Err(reason) => {
                st.new_run = None;
                drop(st);
                let _ = self.send(from, &run, Step::Abort);
                self.fail(from, reason);
            }
        }
    }

    /// First device: the new device's confirmation.
    fn on_confirm(&self, from: &ClientId, run: [u8; LINK_RUN_ID_LEN], tag: &str) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let Some(idx) = st
            .requests
            .iter()
            .position(|r| &r.relay == from && r.run == run && matches!(r.phase, Phase::Confirm(_)))
        else {
            return;
        };
        let Some(mut req) = st.requests.remove(idx) else {
            return;
        };
        let Phase::Confirm(first) = std::mem::replace(&mut req.phase, Phase::Code) else {
            return;
        };
        let outcome = if req.deadline <= now {
            Err(LinkFailure::Expired)
        } else {
            match decode::<CONFIRMATION_LEN>(tag) {
                Some(t) => first.confirm(&t).map_err(|_| LinkFailure::WrongCode),
                None => Err(LinkFailure::Malformed),
            }
        };
        match outcome {
            Ok(confirmed) => {
                let fingerprint = req.device_key.fingerprint();
                let device_id = req.device_id.clone();
                req.phase = Phase::Approval(confirmed);
                st.requests.push_back(req);
                drop(st);
                self.dispatcher
                    .emit(PeerEvent::Link(LinkEvent::AwaitingApproval {
                        relay_id: from.clone(),
                        device_id,
                        fingerprint,
                    }));
            }
            Err(reason) => {
                drop(st);
                let _ = self.send(from, &run, Step::Abort);
                self.fail(from, reason);
            }
        }
    }

    /// New device: the sealed bundle.
    fn on_bundle(&self, from: &ClientId, run: [u8; LINK_RUN_ID_LEN], sealed: &str) {
        let mut st = lock(&self.state);
        let Some(r) = st.new_run.as_ref() else { return };
        if &r.target != from || r.run != run {
            return;
        }
        let Some(r) = st.new_run.take() else { return };
        let opened = r
            .confirmed
            .as_ref()
            .filter(|_| Instant::now() < r.deadline)
            .ok_or(LinkFailure::Expired)
            .and_then(|c| {
                let bytes = B64.decode(sealed).map_err(|_| LinkFailure::Malformed)?;
                c.open(&bytes).map_err(|_| LinkFailure::Malformed)
            })
            .and_then(|plain| {
                let b: Bundle =
                    serde_json::from_slice(&plain).map_err(|_| LinkFailure::Malformed)?;
                linked_from(b, &r).ok_or(LinkFailure::Malformed)
            });
        match opened {
            Ok(linked) => {
                let (client_id, device_id) = (linked.client_id.clone(), linked.device_id.clone());
                st.linked = Some(linked);
                drop(st);
                tracing::info!(peer = %self.client_id, id = %client_id, device = %device_id, "this device is linked");
                self.dispatcher.emit(PeerEvent::Link(LinkEvent::Linked {
                    client_id,
                    device_id,
                }));
            }
            Err(reason) => {
                drop(st);
                self.fail(from, reason);
            }
        }
    }

    fn on_abort(&self, from: &ClientId, run: [u8; LINK_RUN_ID_LEN]) {
        let mut st = lock(&self.state);
        let ours = st
            .new_run
            .as_ref()
            .is_some_and(|r| &r.target == from && r.run == run);
        if ours {
            st.new_run = None;
            drop(st);
            self.fail(from, LinkFailure::Refused);
            return;
        }
        let before = st.requests.len();
        st.requests.retain(|r| !(&r.relay == from && r.run == run));
        let removed = st.requests.len() != before;
        drop(st);
        if removed {
            self.fail(from, LinkFailure::Refused);
        }
    }
}

/// Checks a device list's signature under the id's identity key.
fn verify_list(
    client_id: &ClientId,
    identity: &IdentityPublicKey,
    list: &SignedDeviceList,
) -> Result<(), PeerError> {
    crate::trust::verify_device_list(client_id, identity, list).map(|_| ())
}

/// Checks a bundle against the run it answers: the certificate over *our* device key, a device
/// list naming us with that key and signed by the same identity key.
fn linked_from(b: Bundle, r: &NewRun) -> Option<LinkedDevice> {
    if b.v != BUNDLE_VERSION || b.client_id != r.target || b.device_id != r.device_id {
        return None;
    }
    let identity_key = IdentityPublicKey::from_bytes(&decode::<32>(&b.identity_key)?).ok()?;
    let certificate = decode::<{ lattice_crypto::SIGNATURE_LEN }>(&b.certificate)?;
    if b.contacts.len() > defaults::MAX_LINK_CONTACTS {
        return None;
    }
    let contacts = b
        .contacts
        .iter()
        .map(|c| {
            decode::<32>(&c.identity_key)
                .and_then(|k| IdentityPublicKey::from_bytes(&k).ok())
                .map(|k| (c.client_id.clone(), k))
        })
        .collect::<Option<Vec<_>>>()?;
    let linked = LinkedDevice {
        client_id: b.client_id,
        device_id: b.device_id,
        device_key: IdentityKeyPair::from_secret_bytes(&r.device_key.secret_bytes()),
        certificate,
        device_list: b.device_list,
        identity_key,
        kem_public_key: B64.decode(&b.kem_public_key).ok()?,
        key_signature: B64.decode(&b.key_signature).ok()?,
        contacts,
    };
    linked.verify().ok()?;
    Some(linked)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use lattice_protocol::ServerFrame;

    use super::*;
    use crate::testkit::{id, Kit};

    /// Moves every linking message `from` sent to `to`, as the server would. Returns how many.
    fn relay(from: &mut Kit, to: &Kit) -> usize {
        let mut n = 0;
        while let Some(f) = from.try_sent() {
            if let ClientFrame::Message(m) = f.body {
                assert_eq!(m.target_id, to.me);
                to.serve(
                    ServerFrame::Message(Delivered {
                        message: m.message,
                        from_id: from.me.clone(),
                        timestamp: 1,
                        message_id: m.message_id,
                    }),
                    None,
                );
                n += 1;
            }
        }
        n
    }

    /// The last linking message `kit` sent, kept for a replay.
    fn capture(kit: &mut Kit) -> Vec<SendMessage> {
        let mut out = Vec::new();
        while let Some(f) = kit.try_sent() {
            if let ClientFrame::Message(m) = f.body {
                out.push(m);
            }
        }
        out
    }

    fn deliver(to: &Kit, from: &ClientId, m: &SendMessage) {
        to.serve(
            ServerFrame::Message(Delivered {
                message: m.message.clone(),
                from_id: from.clone(),
                timestamp: 1,
                message_id: m.message_id.clone(),
            }),
            None,
        );
    }

    fn link_events(kit: &Kit) -> Vec<LinkEvent> {
        kit.take_events()
            .into_iter()
            .filter_map(|e| match e {
                PeerEvent::Link(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    fn device() -> DeviceId {
        DeviceId::new("laptop").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_right_code_reaches_approval_with_the_new_device_fingerprint() {
        let mut new = Kit::new("link-1");
        let mut first = Kit::new("alice");
        let code = new.linking.start(&first.me, device()).unwrap();
        assert_eq!(relay(&mut new, &first), 1);
        assert!(matches!(link_events(&first).as_slice(),
            [LinkEvent::Request { relay_id, device_id }] if *relay_id == new.me && *device_id == device()));
        let shown = code.display().unwrap();
        assert_eq!(
            first.linking.enter_code(&shown.to_lowercase()).unwrap(),
            new.me
        );
        assert_eq!(relay(&mut first, &new), 1);
        assert_eq!(relay(&mut new, &first), 1, "the new device confirms");
        let want = new.linking.own_device_fingerprint().unwrap();
        assert!(matches!(link_events(&first).as_slice(),
            [LinkEvent::AwaitingApproval { fingerprint, .. }] if *fingerprint == want));
        assert!(
            link_events(&new).is_empty(),
            "nothing is linked before approval"
        );
        assert!(new.linking.take_linked().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_code_is_refused_and_the_attempt_is_spent() {
        let mut new = Kit::new("link-1");
        let mut first = Kit::new("alice");
        let code = new.linking.start(&first.me, device()).unwrap();
        relay(&mut new, &first);
        let mut wrong = LinkCode::generate(&mut OsRng);
        while wrong == code {
            wrong = LinkCode::generate(&mut OsRng);
        }
        first.linking.enter_code(&wrong.display().unwrap()).unwrap();
        let reply = capture(&mut first);
        deliver(&new, &first.me, &reply[0]);
        assert!(matches!(
            link_events(&new).as_slice(),
            [LinkEvent::Failed {
                reason: LinkFailure::WrongCode,
                ..
            }]
        ));
        // The new device told the first one, which drops the request.
        relay(&mut new, &first);
        assert!(matches!(
            link_events(&first).as_slice(),
            [
                LinkEvent::Request { .. },
                LinkEvent::Failed {
                    reason: LinkFailure::Refused,
                    ..
                }
            ]
        ));
        // The run is spent: the right answer now changes nothing, and no code is awaited.
        assert!(first.linking.enter_code(&code.display().unwrap()).is_err());
        deliver(&new, &first.me, &reply[0]);
        assert!(link_events(&new).is_empty());
        assert!(capture(&mut new).is_empty(), "no answer to a spent run");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_pake_message_is_refused() {
        let mut new = Kit::new("link-1");
        let mut first = Kit::new("alice");
        // Run 1 is recorded by the relay.
        let code = new.linking.start(&first.me, device()).unwrap();
        relay(&mut new, &first);
        first.linking.enter_code(&code.display().unwrap()).unwrap();
        let old_reply = capture(&mut first);
        link_events(&first);
        // Run 2 (a new code): the old reply, replayed, carries run 1's id and is ignored; a copy
        // rewritten to run 2's id fails key confirmation and spends run 2.
        new.linking.start(&first.me, device()).unwrap();
        let hello2 = capture(&mut new);
        deliver(&new, &first.me, &old_reply[0]);
        assert!(link_events(&new).is_empty());
        let run2: Envelope = serde_json::from_str(hello2[0].message.get()).unwrap();
        let mut forged: Envelope = serde_json::from_str(old_reply[0].message.get()).unwrap();
        forged.run = run2.run;
        let forged = SendMessage {
            message: serde_json::value::to_raw_value(&forged).unwrap(),
            ..old_reply[0].clone()
        };
        deliver(&new, &first.me, &forged);
        assert!(matches!(
            link_events(&new).as_slice(),
            [LinkEvent::Failed {
                reason: LinkFailure::WrongCode,
                ..
            }]
        ));
        // The one attempt is spent: the forged reply again gets no answer.
        capture(&mut new);
        deliver(&new, &first.me, &forged);
        assert!(link_events(&new).is_empty());
        assert!(capture(&mut new).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_expires_after_the_code_lifetime() {
        let mut new = Kit::new("link-1");
        let mut first = Kit::new("alice");
        let code = new.linking.start(&first.me, device()).unwrap();
        relay(&mut new, &first);
        link_events(&first);
        first.linking.enter_code(&code.display().unwrap()).unwrap();
        tokio::time::advance(defaults::LINK_CODE_TTL + Duration::from_secs(1)).await;
        relay(&mut first, &new);
        assert!(matches!(
            link_events(&new).as_slice(),
            [LinkEvent::Failed {
                reason: LinkFailure::Expired,
                ..
            }]
        ));
        // A request left waiting for its code expires too.
        let _code = new.linking.start(&first.me, device()).unwrap();
        relay(&mut new, &first);
        tokio::time::advance(defaults::LINK_CODE_TTL).await;
        assert!(first.linking.enter_code(&code.display().unwrap()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_are_bounded_and_hellos_for_another_id_dropped() {
        let first = Kit::new("alice");
        for i in 0..defaults::MAX_PENDING_LINK_REQUESTS + 3 {
            let mut new = Kit::new(&format!("link-{i}"));
            new.linking.start(&first.me, device()).unwrap();
            relay(&mut new, &first);
        }
        assert_eq!(
            lock(&first.linking.state).requests.len(),
            defaults::MAX_PENDING_LINK_REQUESTS
        );
        let mut stray = Kit::new("link-x");
        stray.linking.start(&id("bob"), device()).unwrap();
        let hello = capture(&mut stray);
        first.take_events();
        deliver(&first, &stray.me, &hello[0]);
        assert!(
            first.take_events().is_empty(),
            "a hello for bob is not alice's business"
        );
        assert!(stray.linking.start(&first.me, DeviceId::primary()).is_err());
    }

    #[test]
    fn malformed_linking_envelopes_are_dropped_without_panics() {
        let first = Kit::new("alice");
        for text in [
            r#"{"algorithm":"lattice-link"}"#,
            r#"{"algorithm":"lattice-link","run":"AAAA","step":"abort"}"#,
            r#"{"algorithm":"lattice-link","run":"AAAAAAAAAAAAAAAAAAAAAA==","step":"hello","clientId":"alice","deviceId":"x","deviceKey":"AA==","pake":"AA=="}"#,
            r#"{"algorithm":"lattice-link","run":"AAAAAAAAAAAAAAAAAAAAAA==","step":"bundle","sealed":"!!"}"#,
        ] {
            first.linking.deliver(Delivered {
                message: serde_json::value::RawValue::from_string(text.into()).unwrap(),
                from_id: id("mallory"),
                timestamp: 1,
                message_id: None,
            });
        }
        assert!(first.take_events().is_empty());
    }
}
