//! Waiting on MLS group events, and sending a group text: what the group tests share.

use lattice_peer::{Content, EventStream, GroupChange, GroupId, MessagingPeer, PeerEvent};
use lattice_protocol::{ClientId, DeviceId, MessageId};

use super::wait_for;

/// Sends the text `t` to group `g` and returns its message id.
pub async fn say(p: &MessagingPeer, g: &GroupId, t: &str) -> MessageId {
    p.send_group_content(g, &Content::Text(t.into()))
        .await
        .unwrap()
}

/// Waits until this peer joined a group, and returns it.
pub async fn joined(events: &mut EventStream) -> GroupId {
    wait_for(events, |e| match e {
        PeerEvent::GroupChanged {
            group,
            change: GroupChange::Joined { .. },
            ..
        } => Some(group),
        _ => None,
    })
    .await
}

/// The next text in `group`: its sender and the text.
pub async fn group_text(events: &mut EventStream, group: &GroupId) -> (ClientId, String) {
    wait_for(events, |e| match e {
        PeerEvent::GroupMessage(m) if &m.group == group => match m.content {
            Content::Text(t) => Some((m.from, t)),
            _ => None,
        },
        _ => None,
    })
    .await
}

/// The next device added to (`added`) or removed from `group`: whose and which.
pub async fn device_change(
    events: &mut EventStream,
    group: &GroupId,
    added: bool,
) -> (ClientId, DeviceId) {
    wait_for(events, |e| match e {
        PeerEvent::GroupChanged {
            group: g,
            change: GroupChange::DeviceAdded { member, device },
            ..
        } if &g == group && added => Some((member, device)),
        PeerEvent::GroupChanged {
            group: g,
            change: GroupChange::DeviceRemoved { member, device },
            ..
        } if &g == group && !added => Some((member, device)),
        _ => None,
    })
    .await
}
