//! Device linking through a real `lattice-server` on loopback, with real peers through the public
//! `MessagingPeer` API: the right code and the approval link a device (whose bundle is enough for
//! the server to accept it as a device of the id, and which then gets the id's mail); a wrong
//! code and a refusal link nothing; a removed device is cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use lattice_crypto::{device_certificate_message, device_registration_statement};
use lattice_peer::{LinkEvent, LinkFailure, LinkedDevice, MessagingPeer, PeerEvent};
use lattice_protocol::DeviceId;
use serde_json::{json, Value};
use support::server::*;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn link_event(events: &mut lattice_peer::EventStream) -> LinkEvent {
    wait_for(events, |e| match e {
        PeerEvent::Link(l) => Some(l),
        _ => None,
    })
    .await
}

async fn connected(url: &str, name: &str) -> MessagingPeer {
    let p = peer(url, name);
    p.connect().await.unwrap();
    p
}

/// A fresh throwaway id for the new device while it links.
fn relay_name() -> String {
    format!("link-{}", uuid::Uuid::new_v4().simple())
}

/// The next frame of type `ty` on a raw socket (others skipped), or the close code if it closes.
async fn recv_type(ws: &mut Ws, ty: &str) -> Result<Value, Option<u16>> {
    loop {
        let msg = tokio::time::timeout(EVENT_WAIT, ws.next())
            .await
            .expect("no frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == ty {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Registers `linked` as the device of its id it was linked as, over a raw WebSocket, exactly
/// as docs/protocol.md ("register with a device part") says: the challenge signed by the device
/// key, the certificate and (`with_list`) the device list from the bundle.
async fn register_device(url: &str, linked: &LinkedDevice, with_list: bool) -> Result<Ws, Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(
        json!({"type": "challenge", "requestId": "c1", "payload": {}}).to_string(),
    ))
    .await
    .unwrap();
    let c = recv_type(&mut ws, "challenge").await.unwrap();
    let nonce = B64.decode(c["payload"]["nonce"].as_str().unwrap()).unwrap();
    let statement = device_registration_statement(
        &nonce,
        linked.client_id.as_str(),
        linked.device_id.as_str(),
        &linked.kem_public_key,
    )
    .unwrap();
    let mut register = json!({"type": "register", "requestId": "r1", "payload": {
        "clientId": linked.client_id,
        "publicKey": linked.kem_public_key,
        "keySignature": B64.encode(&linked.key_signature),
        "device": {
            "deviceId": linked.device_id,
            "deviceKey": B64.encode(linked.device_key.public_key().as_bytes()),
            "certificate": B64.encode(linked.certificate),
            "deviceList": linked.device_list,
        },
        "verification": {
            "algorithm": "ed25519",
            "serializedPublicKey": B64.encode(linked.identity_key.as_bytes()),
            "serializedMessage": B64.encode(&statement),
            "serializedSignedData": B64.encode(linked.device_key.sign(&statement)),
        }
    }});
    if !with_list {
        register["payload"]["device"]
            .as_object_mut()
            .unwrap()
            .remove("deviceList");
    }
    ws.send(Message::text(register.to_string())).await.unwrap();
    loop {
        let v = tokio::time::timeout(EVENT_WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = v {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            match v["type"].as_str() {
                Some("register") => return Ok(ws),
                Some("error") => return Err(v),
                _ => {}
            }
        }
    }
}

/// Runs the new device's side up to the code, and the first device's up to the request.
async fn start(
    first: &MessagingPeer,
    first_events: &mut lattice_peer::EventStream,
    new: &MessagingPeer,
    device: &str,
) -> String {
    let code = new
        .start_linking(first.client_id(), DeviceId::new(device).unwrap())
        .unwrap();
    match link_event(first_events).await {
        LinkEvent::Request {
            relay_id,
            device_id,
        } => {
            assert_eq!(&relay_id, new.client_id());
            assert_eq!(device_id.as_str(), device);
        }
        other => panic!("expected a request, got {other:?}"),
    }
    code
}

#[tokio::test]
async fn the_right_code_and_approval_link_a_device_that_then_gets_the_ids_mail() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = connected(&url, "alice").await;
    let bob = connected(&url, "bob").await;
    // alice has bob's key pinned: the new device gets the pin.
    alice.request_public_key(bob.client_id()).await.unwrap();
    let new = connected(&url, &relay_name()).await;
    let mut alice_events = alice.events();
    let mut new_events = new.events();

    let code = start(&alice, &mut alice_events, &new, "laptop").await;
    assert_eq!(alice.enter_link_code(&code).unwrap(), *new.client_id());
    let LinkEvent::AwaitingApproval {
        relay_id,
        fingerprint,
        ..
    } = link_event(&mut alice_events).await
    else {
        panic!("expected the approval prompt");
    };
    assert_eq!(Some(fingerprint), new.linking_fingerprint());
    assert!(
        new.take_linked_device().is_none(),
        "nothing before approval"
    );
    alice.approve_link(&relay_id, true).await.unwrap();
    assert!(matches!(
        link_event(&mut alice_events).await,
        LinkEvent::Approved { device_id } if device_id.as_str() == "laptop"
    ));
    assert!(matches!(
        link_event(&mut new_events).await,
        LinkEvent::Linked { client_id, device_id }
            if client_id == *alice.client_id() && device_id.as_str() == "laptop"
    ));
    let linked = new.take_linked_device().unwrap();
    assert_eq!(linked.identity_key.fingerprint(), alice.fingerprint());
    assert!(linked
        .identity_key
        .verify(
            &device_certificate_message(
                "alice",
                "laptop",
                linked.device_key.public_key().as_bytes()
            )
            .unwrap(),
            &linked.certificate
        )
        .is_ok());
    assert!(linked.contacts.iter().any(|(id, _)| id == bob.client_id()));
    let listed: Vec<String> = alice
        .devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(listed, ["laptop"]);
    // A contact learns it with alice's keys: "alice added a device".
    let mut bob_events = bob.events();
    bob.request_public_key(alice.client_id()).await.unwrap();
    let (peer, added) = wait_for(&mut bob_events, |e| match e {
        PeerEvent::DevicesChanged { peer, added, .. } => Some((peer, added)),
        _ => None,
    })
    .await;
    assert_eq!(&peer, alice.client_id());
    assert_eq!(added, [DeviceId::new("laptop").unwrap()]);

    // The bundle is all the new device needs to be accepted as alice's "laptop"; bob's message
    // to alice then reaches it as well as alice's first device.
    let mut ws = register_device(&url, &linked, true)
        .await
        .expect("registered");
    let mut alice_msgs = alice.events();
    bob.send_message(alice.client_id(), "to every device")
        .await
        .unwrap();
    let got = recv_type(&mut ws, "message").await.unwrap();
    assert_eq!(got["payload"]["fromId"], "bob");
    wait_for(&mut alice_msgs, |e| match e {
        PeerEvent::Message(m) if m.text == "to every device" => Some(()),
        _ => None,
    })
    .await;

    // Removed: the server closes its connection (4001) and it cannot come back.
    alice
        .remove_device(&DeviceId::new("laptop").unwrap())
        .await
        .unwrap();
    assert_eq!(recv_type(&mut ws, "never").await.unwrap_err(), Some(4001));
    // Neither with the list it was linked with (older than the one without it) nor without one.
    let again = register_device(&url, &linked, true).await.unwrap_err();
    assert_eq!(
        again["payload"]["errorType"], "STALE_DEVICE_LIST",
        "{again}"
    );
    let again = register_device(&url, &linked, false).await.unwrap_err();
    assert_eq!(again["payload"]["errorType"], "UNKNOWN_DEVICE", "{again}");
    assert!(alice.devices().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_wrong_code_links_nothing_and_spends_the_attempt() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = connected(&url, "alice").await;
    let new = connected(&url, &relay_name()).await;
    let mut alice_events = alice.events();
    let mut new_events = new.events();
    let code = start(&alice, &mut alice_events, &new, "phone").await;
    // One character off.
    let mut wrong: Vec<char> = code.chars().collect();
    wrong[0] = if wrong[0] == '0' { '1' } else { '0' };
    let wrong: String = wrong.into_iter().collect();
    alice.enter_link_code(&wrong).unwrap();
    assert!(matches!(
        link_event(&mut new_events).await,
        LinkEvent::Failed {
            reason: LinkFailure::WrongCode,
            ..
        }
    ));
    assert!(matches!(
        link_event(&mut alice_events).await,
        LinkEvent::Failed { .. }
    ));
    // The right code now finds no run: it was spent.
    assert!(alice.enter_link_code(&code).is_err());
    assert!(new.take_linked_device().is_none());
    assert!(alice.devices().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_device_gets_nothing_and_no_list_is_published() {
    let server = spawn_server().await;
    let url = server.url();
    let alice = connected(&url, "alice").await;
    let new = connected(&url, &relay_name()).await;
    let mut alice_events = alice.events();
    let mut new_events = new.events();
    let code = start(&alice, &mut alice_events, &new, "tablet").await;
    alice.enter_link_code(&code).unwrap();
    let LinkEvent::AwaitingApproval { relay_id, .. } = link_event(&mut alice_events).await else {
        panic!("expected the approval prompt");
    };
    alice.approve_link(&relay_id, false).await.unwrap();
    assert!(matches!(
        link_event(&mut new_events).await,
        LinkEvent::Failed {
            reason: LinkFailure::Refused,
            ..
        }
    ));
    assert!(new.take_linked_device().is_none());
    assert!(alice.devices().await.unwrap().is_empty());
    // A second approval of the same device finds nothing to approve.
    assert!(alice.approve_link(&relay_id, true).await.is_err());
}
