//! Linked-device helpers shared by the device tests (`devices.rs` on one node,
//! `devices_nodes.rs` on several): a device's key, signed device lists and certificates, the
//! device `register` frame, and MLS-shaped payloads for group frames.
#![allow(dead_code)]

use base64::Engine as _;
use lattice_crypto::{Identity, IdentityKeyPair};
use serde_json::{json, Value};

use crate::support::{challenge, envelope, kem_key, register_verified, Client, B64};

/// A linked device: its id and Ed25519 key.
pub struct Device {
    pub name: &'static str,
    pub key: IdentityKeyPair,
}

impl Device {
    pub fn new(name: &'static str) -> Device {
        Device {
            name,
            key: IdentityKeyPair::generate(&mut rand::rngs::OsRng),
        }
    }

    pub fn entry(&self) -> Value {
        json!({"deviceId": self.name, "deviceKey": B64.encode(self.key.public_key().as_bytes())})
    }
}

/// The device list of `id` with `devices`, signed by `signer` (the id's identity key, or a
/// forger's).
pub fn signed_list(signer: &Identity, id: &str, counter: u64, devices: &[&Device]) -> Value {
    let entries: Vec<(&str, [u8; 32])> = devices
        .iter()
        .map(|d| (d.name, *d.key.public_key().as_bytes()))
        .collect();
    let message = lattice_crypto::device_list_message(id, counter, &entries).unwrap();
    json!({
        "counter": counter,
        "devices": devices.iter().map(|d| d.entry()).collect::<Vec<_>>(),
        "signature": B64.encode(signer.identity_key().sign(&message)),
    })
}

/// The certificate of `device` for `id`, signed by `signer`.
pub fn certificate(signer: &Identity, id: &str, device: &Device) -> String {
    let message = lattice_crypto::device_certificate_message(
        id,
        device.name,
        device.key.public_key().as_bytes(),
    )
    .unwrap();
    B64.encode(signer.identity_key().sign(&message))
}

/// A device `register` frame answering `nonce`, the statement signed by the device key.
pub fn device_register(
    identity: &Identity,
    id: &str,
    device: &Device,
    cert: String,
    list: Option<Value>,
    nonce: &[u8],
) -> Value {
    let kem = kem_key(identity);
    let statement =
        lattice_crypto::device_registration_statement(nonce, id, device.name, &kem).unwrap();
    let mut part = json!({
        "deviceId": device.name,
        "deviceKey": B64.encode(device.key.public_key().as_bytes()),
        "certificate": cert,
    });
    if let Some(list) = list {
        part["deviceList"] = list;
    }
    json!({"type":"register","requestId":"reg","payload":{
        "clientId": id,
        "publicKey": kem,
        "keySignature": B64.encode(identity.key_signature()),
        "device": part,
        "verification": {
            "algorithm": "ed25519",
            "serializedPublicKey": B64.encode(identity.identity_public_key().as_bytes()),
            "serializedMessage": B64.encode(&statement),
            "serializedSignedData": B64.encode(device.key.sign(&statement)),
        }
    }})
}

/// Connects `device` of `id` with a certificate by `identity`; the client and the answer.
pub async fn try_device(
    url: &str,
    identity: &Identity,
    id: &str,
    device: &Device,
    list: Option<Value>,
) -> (Client, Value) {
    let cert = certificate(identity, id, device);
    try_device_with(url, identity, id, device, cert, list).await
}

pub async fn try_device_with(
    url: &str,
    identity: &Identity,
    id: &str,
    device: &Device,
    cert: String,
    list: Option<Value>,
) -> (Client, Value) {
    let mut c = Client::connect(url).await;
    let nonce = challenge(&mut c).await;
    c.send(device_register(identity, id, device, cert, list, &nonce))
        .await;
    let v = c.recv_any(&["register", "error"]).await;
    (c, v)
}

pub async fn device(url: &str, identity: &Identity, id: &str, device: &Device) -> Client {
    let (c, v) = try_device(url, identity, id, device, None).await;
    assert_eq!(
        v["payload"],
        json!({"success": true, "clientId": id, "verified": true, "deviceId": device.name}),
        "{v}"
    );
    c
}

pub async fn upload_list(c: &mut Client, list: Value, rid: &str) -> Value {
    c.send(json!({"type":"device_list_upload","requestId": rid,"payload":{"deviceList": list}}))
        .await;
    c.recv_any(&["device_list_upload", "error"]).await
}

pub fn assert_error(v: &Value, code: &str, rid: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["payload"]["errorType"], code, "{v}");
    assert_eq!(v["requestId"], rid, "{v}");
    assert_eq!(v["payload"]["requestId"], rid, "{v}");
}

pub fn message(target: &str, mid: &str) -> Value {
    json!({"type":"message","requestId": mid,"payload":{"targetId": target,"messageId": mid,"message": envelope(mid)}})
}

/// The next delivered `message` (skipping presence and answers).
pub async fn next_message(c: &mut Client) -> Value {
    c.recv_any(&["message"]).await["payload"].clone()
}

/// Sends `v` and reads its answer of type `ty` (or an error), skipping deliveries.
#[allow(async_fn_in_trait)]
pub trait Ask {
    async fn ask(&mut self, v: Value, ty: &str) -> Value;
}

impl Ask for Client {
    async fn ask(&mut self, v: Value, ty: &str) -> Value {
        self.send(v).await;
        self.recv_any(&[ty, "error"]).await
    }
}

/// The server still answers this connection.
pub async fn alive(c: &mut Client) {
    c.request(json!({"type":"discover","payload":{}}), "discover")
        .await;
}

/// alice's primary device online, with `devices` on her list (counter 1).
pub async fn alice_with(url: &str, alice: &Identity, devices: &[&Device]) -> Client {
    let mut primary = register_verified(url, "alice", alice).await;
    let v = upload_list(&mut primary, signed_list(alice, "alice", 1, devices), "l1").await;
    assert_eq!(
        v["payload"],
        json!({"counter": 1, "devices": devices.len()}),
        "{v}"
    );
    primary
}

/// An MLS `PrivateMessage` as far as the server reads it (see `mls_delivery.rs`).
pub fn mls(group_hex: &str, epoch: u64, content_type: u8, tag: &str) -> String {
    let group: Vec<u8> = (0..group_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&group_hex[i..i + 2], 16).unwrap())
        .collect();
    let mut b = vec![0, 1, 0, 2, u8::try_from(group.len()).unwrap()];
    b.extend_from_slice(&group);
    b.extend_from_slice(&epoch.to_be_bytes());
    b.push(content_type);
    b.extend_from_slice(tag.as_bytes());
    B64.encode(b)
}

pub fn welcome(tag: &str) -> String {
    let mut b = vec![0, 1, 0, 3];
    b.extend_from_slice(tag.as_bytes());
    B64.encode(b)
}

pub const APPLICATION: u8 = 1;
pub const COMMIT: u8 = 3;

pub fn leaf(id: &str, device: &str) -> Value {
    json!({"clientId": id, "deviceId": device})
}

/// The `mls` envelope of the next delivered message.
pub async fn next_mls(c: &mut Client) -> (String, Value) {
    let m = next_message(c).await;
    (
        m["fromId"].as_str().unwrap().to_owned(),
        m["message"].clone(),
    )
}

/// alice's primary (on `urls[0]`) and her phone (on `urls[1]`, listed) each get bob's message
/// `m1` (bob on `urls[2]`), stored once per device and answered `queued`; bob's key request
/// carries alice's device list. Returns (alice's identity, phone, primary, phone's connection,
/// bob) for the rest of a test. One node: the same URL three times.
pub async fn every_device_gets_its_copy(
    urls: [&str; 3],
) -> (Identity, Device, Client, Client, Client) {
    let alice = crate::support::new_identity();
    let phone = Device::new("phone");
    let mut primary = alice_with(urls[0], &alice, &[&phone]).await;
    let mut phone_c = device(urls[1], &alice, "alice", &phone).await;
    let mut bob = register_verified(urls[2], "bob", &crate::support::new_identity()).await;

    bob.send(message("alice", "m1")).await;
    let ack = bob.recv_type("message_ack").await;
    assert_eq!(
        ack["payload"]["status"], "queued",
        "stored once per device: {ack}"
    );
    for c in [&mut primary, &mut phone_c] {
        let m = next_message(c).await;
        assert_eq!(
            (m["fromId"].as_str(), m["messageId"].as_str()),
            (Some("bob"), Some("m1"))
        );
    }
    // The contact learns the list with the keys.
    let k = bob
        .request(
            json!({"type":"request_public_key","payload":{"targetId":"alice"}}),
            "public_key_response",
        )
        .await;
    assert_eq!(k["payload"]["deviceList"]["counter"], 1, "{k}");
    assert_eq!(
        k["payload"]["deviceList"]["devices"][0]["deviceId"],
        "phone"
    );
    (alice, phone, primary, phone_c, bob)
}
