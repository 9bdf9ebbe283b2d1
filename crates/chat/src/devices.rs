//! Linking devices in the terminal: `/link`, `/approve`, `/refuse`, `/devices`, `/device remove`,
//! and how linking progress is shown. The protocol is `lattice-peer`'s (docs/mls.md,
//! *Multi-device*): the new device shows a code, the first device's user types it, compares the
//! new device's fingerprint and approves.

use std::path::PathBuf;

use lattice_peer::{FileKeyStore, LinkEvent, LinkFailure, MessagingPeer, PeerEvent};
use lattice_protocol::{ClientId, DeviceId};

use crate::command::Command;
use crate::display::escape;

/// Runs a device command; `Ok(false)` for any other command. `awaiting` is the new device
/// whose fingerprint was shown last (what `/approve` and `/refuse` answer).
pub async fn handle(
    peer: &MessagingPeer,
    command: &Command,
    awaiting: Option<ClientId>,
) -> anyhow::Result<bool> {
    match command {
        Command::LinkStart { id, device } => {
            let id = ClientId::new(id.clone())?;
            let device = DeviceId::new(device.clone())?;
            let code = peer.start_linking(&id, device)?;
            println!("-- linking code: {code}   (valid 5 minutes, one attempt)");
            println!("-- on a device of {id}, type: /link {code}");
            if let Some(fp) = peer.linking_fingerprint() {
                println!("-- this device's fingerprint (the other device shows it, compare): {fp}");
            }
        }
        Command::LinkCode(code) => {
            let relay = peer.enter_link_code(code)?;
            println!(
                "-- code sent to {}; waiting for it to confirm …",
                escape(relay.as_str())
            );
        }
        Command::LinkApprove(approve) => match awaiting {
            Some(relay) => {
                peer.approve_link(&relay, *approve).await?;
                if !approve {
                    println!("-- refused");
                }
            }
            None => println!("!! no new device awaits approval"),
        },
        Command::Devices => {
            let devices = peer.devices().await?;
            println!(
                "-- devices of {}: primary (this identity key)",
                peer.client_id()
            );
            for d in devices {
                println!("   {}", escape(d.device_id.as_str()));
            }
        }
        Command::DeviceRemove(device) => {
            let device = DeviceId::new(device.clone())?;
            peer.remove_device(&device).await?;
            println!("-- {device} removed from the device list");
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// This device was just linked: saves it to `target` (`--device-file`, or
/// `{data dir}/lattice/{id}.{device}.device`) with the contacts' pins next to it, and says how to
/// run as it. Returns the lines to print.
pub fn save_linked(peer: &MessagingPeer, target: Option<PathBuf>) -> Vec<String> {
    let Some(linked) = peer.take_linked_device() else {
        return Vec::new();
    };
    let path = match target.or_else(|| {
        dirs::data_dir().map(|d| {
            d.join("lattice")
                .join(format!("{}.{}.device", linked.client_id, linked.device_id))
        })
    }) {
        Some(p) => p,
        None => {
            return vec![
                "!! no data directory on this system; start with --device-file to keep this device"
                    .into(),
            ]
        }
    };
    let saved = lattice_peer::device_file::save(&path, &linked).and_then(|()| {
        let pins = FileKeyStore::open(&lattice_peer::identity_file::key_store_path(&path))?;
        linked.import_pins(&pins)
    });
    match saved {
        Ok(pinned) => vec![
            format!(
                "-- saved this device to {} ({pinned} contact keys pinned)",
                escape(&path.display().to_string())
            ),
            format!(
                "-- from now on run: lattice-chat --id {} --device-file {}",
                escape(linked.client_id.as_str()),
                escape(&path.display().to_string())
            ),
        ],
        Err(e) => vec![format!(
            "!! this device is linked but could not be saved: {}",
            escape(&e.to_string())
        )],
    }
}

/// The lines for a linking event (empty for other events).
pub fn event_lines(event: &PeerEvent) -> Vec<String> {
    if let PeerEvent::DevicesChanged {
        peer,
        added,
        removed,
    } = event
    {
        let names = |l: &[DeviceId]| {
            l.iter()
                .map(|d| escape(d.as_str()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = Vec::new();
        if !added.is_empty() {
            lines.push(format!(
                "-- {} added a device: {}",
                escape(peer.as_str()),
                names(added)
            ));
        }
        if !removed.is_empty() {
            lines.push(format!(
                "-- {} removed a device: {}",
                escape(peer.as_str()),
                names(removed)
            ));
        }
        return lines;
    }
    let PeerEvent::Link(e) = event else {
        return Vec::new();
    };
    match e {
        LinkEvent::Request { device_id, .. } => vec![format!(
            "-- a new device {:?} asks to be linked: type /link <the code it shows>",
            escape(device_id.as_str())
        )],
        LinkEvent::AwaitingApproval {
            device_id,
            fingerprint,
            ..
        } => vec![
            format!(
                "-- the code was right. New device {:?} has the fingerprint:",
                escape(device_id.as_str())
            ),
            format!("   {fingerprint}"),
            "-- compare it with the one the new device shows, then /approve (or /refuse)".into(),
        ],
        LinkEvent::Approved { device_id } => vec![format!(
            "-- device {:?} linked and added to the device list",
            escape(device_id.as_str())
        )],
        LinkEvent::Linked {
            client_id,
            device_id,
        } => vec![format!(
            "-- linked: this device is now {:?} of {}",
            escape(device_id.as_str()),
            escape(client_id.as_str())
        )],
        LinkEvent::Failed { reason, .. } => vec![format!(
            "!! linking failed: {}",
            match reason {
                LinkFailure::WrongCode => "wrong code (it is spent: start again for a new one)",
                LinkFailure::Refused => "refused",
                LinkFailure::Expired => "the code expired",
                _ => "a malformed message",
            }
        )],
        _ => Vec::new(),
    }
}
