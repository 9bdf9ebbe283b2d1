//! Linking devices in the terminal: `/link`, `/approve`, `/refuse`, `/devices`, `/device remove`,
//! and how linking progress is shown. The protocol is `lattice-peer`'s (docs/mls.md,
//! *Multi-device*): the new device shows a code, the first device's user types it, compares the
//! new device's fingerprint and approves.

use std::path::PathBuf;
use std::sync::Mutex;

use lattice_peer::{
    EventStream, FileKeyStore, LinkEvent, LinkFailure, MessagingPeer, PeerConfig, PeerEvent,
    TlsOptions,
};
use lattice_protocol::{ClientId, DeviceId};
use tokio::task::JoinHandle;

use crate::command::Command;
use crate::display::escape;

/// Runs `/link <id> <device>`: linking goes over its own *link relay* peer
/// ([`PeerConfig::for_linking`]), never listed by the server, beside this chat's peer. At most
/// one run at a time: a new `/link` ends the previous one.
#[derive(Debug)]
pub struct Linker {
    server_url: String,
    tls: TlsOptions,
    /// Where the linked device is saved (`--device-file`), if given.
    device_file: Option<PathBuf>,
    /// How the relay's lines reach the terminal (the chat's printer).
    print: fn(&[String]),
    /// The run under way (std mutex: swapped, never held across an await).
    run: Mutex<Option<RelayRun>>,
}

/// A link relay peer and the task printing its events; dropping it ends both.
#[derive(Debug)]
struct RelayRun {
    peer: MessagingPeer,
    task: JoinHandle<()>,
}

impl Drop for RelayRun {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Linker {
    /// Linking over `server_url` with `tls`, saving to `device_file`, printing with `print`.
    pub fn new(
        server_url: String,
        tls: TlsOptions,
        device_file: Option<PathBuf>,
        print: fn(&[String]),
    ) -> Self {
        Self {
            server_url,
            tls,
            device_file,
            print,
            run: Mutex::new(None),
        }
    }

    /// Connects a link relay and starts linking it to `id` as `device`; returns the code and
    /// the relay's device fingerprint.
    async fn start(&self, id: &ClientId, device: DeviceId) -> anyhow::Result<(String, String)> {
        // Ends the previous run, if any, before a new relay registers.
        let previous = self.run.lock().ok().and_then(|mut r| r.take());
        if let Some(old) = previous {
            old.peer.disconnect().await;
        }
        let mut config = PeerConfig::for_linking(self.server_url.clone());
        config.tls = self.tls.clone();
        let relay = MessagingPeer::new(config)?;
        let events = relay.events();
        relay.connect().await?;
        let code = relay.start_linking(id, device)?;
        let fingerprint = relay
            .linking_fingerprint()
            .map(|f| f.to_string())
            .unwrap_or_default();
        let task = tokio::spawn(relay_events(
            relay.clone(),
            events,
            self.device_file.clone(),
            self.print,
        ));
        if let Ok(mut run) = self.run.lock() {
            *run = Some(RelayRun { peer: relay, task });
        }
        Ok((code, fingerprint))
    }
}

/// Prints a link relay's linking events until the run ends (linked: saved; failed), then
/// disconnects it.
async fn relay_events(
    relay: MessagingPeer,
    mut events: EventStream,
    target: Option<PathBuf>,
    print: fn(&[String]),
) {
    while let Some(event) = events.next().await {
        let PeerEvent::Link(link) = &event else {
            continue;
        };
        print(&event_lines(&event));
        match link {
            LinkEvent::Linked { .. } => {
                print(&save_linked(&relay, target));
                break;
            }
            LinkEvent::Failed { .. } => break,
            _ => {}
        }
    }
    relay.disconnect().await;
}

/// Runs a device command; `Ok(false)` for any other command. `awaiting` is the new device
/// whose fingerprint was shown last (what `/approve` and `/refuse` answer); `linker` runs
/// `/link <id> <device>`.
pub async fn handle(
    peer: &MessagingPeer,
    command: &Command,
    awaiting: Option<ClientId>,
    linker: Option<&Linker>,
) -> anyhow::Result<bool> {
    match command {
        Command::LinkStart { id, device } => {
            let id = ClientId::new(id.clone())?;
            let device = DeviceId::new(device.clone())?;
            let Some(linker) = linker else {
                println!("!! linking is not available in this run");
                return Ok(true);
            };
            let (code, fp) = linker.start(&id, device).await?;
            println!("-- linking code: {code}   (valid 5 minutes, one attempt)");
            println!("-- on a device of {id}, type: /link {code}");
            println!("-- this device's fingerprint (the other device shows it, compare): {fp}");
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
