//! Linking a device through the real flow, for the multi-device tests.

use lattice_peer::{EventStream, LinkEvent, LinkedDevice, MessagingPeer, PeerConfig, PeerEvent};
use lattice_protocol::DeviceId;

use super::wait_for;

/// A device id (test input: always valid).
pub fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// The next linking event.
pub async fn link_event(events: &mut EventStream) -> LinkEvent {
    wait_for(events, |e| match e {
        PeerEvent::Link(l) => Some(l),
        _ => None,
    })
    .await
}

/// Links a new device `device` to `primary` through the real flow (a link relay, the code, the
/// approval) and returns what the new device got. The relay is never in `primary`'s `discover`.
pub async fn link_device(url: &str, primary: &MessagingPeer, device: &str) -> LinkedDevice {
    let mut primary_events = primary.events();
    let new = MessagingPeer::new(super::quick(PeerConfig::for_linking(url))).unwrap();
    new.connect().await.unwrap();
    let listed = primary.discover_peers().await.unwrap();
    assert!(
        !listed.contains(new.client_id()),
        "the link relay is listed: {listed:?}"
    );
    let mut new_events = new.events();
    let code = new.start_linking(primary.client_id(), dev(device)).unwrap();
    assert!(matches!(
        link_event(&mut primary_events).await,
        LinkEvent::Request { .. }
    ));
    primary.enter_link_code(&code).unwrap();
    let LinkEvent::AwaitingApproval { relay_id, .. } = link_event(&mut primary_events).await else {
        panic!("expected the approval prompt");
    };
    primary.approve_link(&relay_id, true).await.unwrap();
    assert!(matches!(
        link_event(&mut new_events).await,
        LinkEvent::Linked { .. }
    ));
    let linked = new.take_linked_device().unwrap();
    new.disconnect().await;
    linked
}
