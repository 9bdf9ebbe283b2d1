//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod devices;
pub mod fake;
pub mod groups;
pub mod person;
pub mod raw;
pub mod scripted;
pub mod sender_log;
pub mod server;

use std::time::Duration;

use lattice_crypto::Identity;
use lattice_peer::{Backoff, EventStream, MessagingPeer, PeerConfig, PeerEvent, Timeouts};
use lattice_protocol::ClientId;

/// Bound on waiting for one event.
pub const EVENT_WAIT: Duration = Duration::from_secs(15);

pub fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

/// A config with short timeouts and a fast backoff, for tests.
pub fn test_config(url: &str, client_id: &str, identity: Identity) -> PeerConfig {
    quick(PeerConfig::new(url, id(client_id), identity))
}

/// A linked device's config (MLS state at `mls_state`) with the timeouts of [`test_config`].
pub fn device_config(
    url: &str,
    linked: lattice_peer::LinkedDevice,
    mls_state: &std::path::Path,
) -> PeerConfig {
    let mut c = quick(PeerConfig::for_device(url, linked));
    c.mls_state = Some(mls_state.to_owned());
    c
}

fn quick(mut c: PeerConfig) -> PeerConfig {
    c.reconnect = Backoff {
        base: Duration::from_millis(50),
        factor: 2.0,
        max: Duration::from_millis(400),
        max_attempts: 40,
        jitter: 0.0,
        enabled: true,
    };
    c.timeouts = Timeouts {
        request: Duration::from_secs(5),
        connect: Duration::from_secs(5),
        ..Timeouts::default()
    };
    c
}

pub fn new_identity() -> Identity {
    Identity::generate(&mut rand_core::OsRng)
}

pub fn peer(url: &str, client_id: &str) -> MessagingPeer {
    MessagingPeer::new(test_config(url, client_id, new_identity())).unwrap()
}

/// Waits for the first event `pick` accepts; panics after [`EVENT_WAIT`].
pub async fn wait_for<T>(
    events: &mut EventStream,
    mut pick: impl FnMut(PeerEvent) -> Option<T>,
) -> T {
    let fut = async {
        while let Some(ev) = events.next().await {
            if let Some(t) = pick(ev) {
                return t;
            }
        }
        panic!("event stream ended");
    };
    tokio::time::timeout(EVENT_WAIT, fut)
        .await
        .expect("expected event did not arrive in time")
}

/// Asserts that no event `pick` accepts arrives before `marker` (an event that must come after).
pub async fn none_before<T: std::fmt::Debug>(
    events: &mut EventStream,
    mut bad: impl FnMut(&PeerEvent) -> bool,
    mut marker: impl FnMut(&PeerEvent) -> Option<T>,
) -> T {
    let fut = async {
        while let Some(ev) = events.next().await {
            assert!(!bad(&ev), "unexpected event {ev:?}");
            if let Some(t) = marker(&ev) {
                return t;
            }
        }
        panic!("event stream ended");
    };
    tokio::time::timeout(EVENT_WAIT, fut)
        .await
        .expect("marker event did not arrive in time")
}
