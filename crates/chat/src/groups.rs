//! Group chats in the terminal: the `/group`, `/groups`, `/g` and `/members` commands, and how
//! group messages and changes are shown (`[group] sender: text`, `-- [group] …` system lines).
//! Groups are MLS groups of `lattice-peer`; their state lives next to the identity
//! (`<id>.mls`). Group messages are shown, not kept in the `/search` history.

use std::collections::HashMap;

use lattice_peer::{
    Content, GroupChange, GroupId, GroupMessage, MessageRef, MessagingPeer, PeerEvent,
};
use lattice_protocol::ClientId;

use crate::command::Command;
use crate::display::escape;

/// The group's name for display (its id when it is gone).
pub fn name_of(peer: &MessagingPeer, g: &GroupId) -> String {
    peer.group_info(g)
        .map_or_else(|_| g.to_string(), |i| i.name)
}

fn ids(list: &[String]) -> anyhow::Result<Vec<ClientId>> {
    list.iter()
        .map(|s| ClientId::new(s.clone()).map_err(|e| anyhow::anyhow!("{s:?}: {e}")))
        .collect()
}

fn names(list: &[ClientId]) -> String {
    list.iter()
        .map(|c| escape(c.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lines for a group event (empty for other events).
pub fn event_lines(peer: &MessagingPeer, event: &PeerEvent) -> Vec<String> {
    match event {
        // The digest of a group file is for the library (a download of it completes with it).
        PeerEvent::GroupMessage(GroupMessage {
            content: Content::FileDigest { .. },
            ..
        }) => Vec::new(),
        PeerEvent::GroupMessage(GroupMessage {
            group,
            from,
            content,
            ..
        }) => {
            let text = content.display_text().unwrap_or_default();
            let prefix = match content {
                Content::Reply { excerpt, .. } => format!("(re: {}) ", escape(excerpt)),
                _ => String::new(),
            };

            vec![format!(
                "[{}] {}: {prefix}{}",
                escape(&name_of(peer, group)),
                escape(from.as_str()),
                escape(&text)
            )]
        }
        PeerEvent::GroupTyping {
            group,
            member,
            started: true,
        } => vec![format!(
            "-- [{}] {} is typing …",
            escape(&name_of(peer, group)),
            escape(member.as_str())
        )],
        PeerEvent::GroupReadElsewhere { group, device, .. } => vec![format!(
            "-- [{}] read on your {}",
            escape(&name_of(peer, group)),
            escape(device.as_deref().unwrap_or("primary device"))
        )],
        PeerEvent::GroupChanged { group, by, change } => {
            let g = escape(&name_of(peer, group)).into_owned();
            let by = by
                .as_ref()
                .map_or_else(|| "someone".to_owned(), |b| escape(b.as_str()).into_owned());
            let line = match change {
                GroupChange::Joined { name, members } => format!(
                    "-- you joined [{}] (added by {by}); members: {}",
                    escape(name),
                    names(members)
                ),
                GroupChange::MembersAdded(m) => format!("-- [{g}] {by} added {}", names(m)),
                GroupChange::MemberRemoved(m) => {
                    format!("-- [{g}] {} left or was removed", escape(m.as_str()))
                }
                GroupChange::LeaveRequested(m) => {
                    format!("-- [{g}] {} is leaving", escape(m.as_str()))
                }
                GroupChange::Renamed(n) => {
                    format!("-- [{g}] {by} renamed the group to {}", escape(n))
                }
                GroupChange::Removed => format!("-- you are no longer in [{}]", group),
                // Key rotations and epochs are not news to a reader.
                _ => return Vec::new(),
            };
            vec![line]
        }
        _ => Vec::new(),
    }
}

/// Groups whose readers are remembered for "read by alice, bob"; past it the memory starts over.
const READ_BY_GROUPS: usize = 64;

/// Who read each group up to its newest read message, for one "read by …" line per receipt.
/// One entry per group (at most [`READ_BY_GROUPS`]), each naming at most the group's members.
#[derive(Debug, Default)]
pub struct ReadBy {
    groups: HashMap<GroupId, (MessageRef, Vec<ClientId>)>,
}

impl ReadBy {
    /// `member` read `group` up to `up_to`: the line to show, naming everyone who read up to
    /// that same message (`-- [group] read by alice, bob`).
    pub fn read(
        &mut self,
        group: &GroupId,
        name: &str,
        member: &ClientId,
        up_to: &MessageRef,
    ) -> String {
        if !self.groups.contains_key(group) && self.groups.len() >= READ_BY_GROUPS {
            self.groups.clear();
        }
        let entry = self
            .groups
            .entry(group.clone())
            .or_insert_with(|| (up_to.clone(), Vec::new()));
        if entry.0 != *up_to {
            *entry = (up_to.clone(), Vec::new());
        }
        if !entry.1.contains(member) {
            entry.1.push(member.clone());
        }
        format!("-- [{}] read by {}", escape(name), names(&entry.1))
    }
}

/// The group `/g` names: `#n` / `n` as listed by `/groups`, or a name.
fn pick(peer: &MessagingPeer, which: &str) -> anyhow::Result<Option<GroupId>> {
    let groups = peer.groups_list()?;
    if let Ok(n) = which.strip_prefix('#').unwrap_or(which).parse::<usize>() {
        return Ok(n.checked_sub(1).and_then(|i| groups.get(i)).cloned());
    }
    Ok(groups
        .into_iter()
        .find(|g| peer.group_info(g).is_ok_and(|i| i.name == which)))
}

/// Runs a group command. `current` is the group plain lines go to; it is updated by `/g` and
/// `/group new`, and cleared when we leave. Returns `true` if the command was a group command.
pub async fn handle(
    peer: &MessagingPeer,
    current: &mut Option<GroupId>,
    command: &Command,
) -> anyhow::Result<bool> {
    let need = |c: &Option<GroupId>| {
        c.clone()
            .ok_or_else(|| anyhow::anyhow!("no group picked (/groups, then /g <n>)"))
    };
    match command {
        Command::GroupNew { name, members } => {
            println!("-- creating [{}] …", escape(name));
            let g = peer.create_group(name, &ids(members)?).await?;
            println!(
                "-- [{}] created with {}; plain lines go to it now",
                escape(name),
                members
                    .iter()
                    .map(|m| escape(m))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            *current = Some(g);
        }
        Command::GroupAdd(m) => {
            let g = need(current)?;
            peer.invite_to_group(&g, &ids(m)?).await?;
            println!("-- [{}] added {}", escape(&name_of(peer, &g)), m.join(", "));
        }
        Command::GroupRemove(m) => {
            let g = need(current)?;
            peer.remove_from_group(&g, &ids(m)?).await?;
            println!(
                "-- [{}] removed {}",
                escape(&name_of(peer, &g)),
                m.join(", ")
            );
        }
        Command::GroupRename(n) => {
            let g = need(current)?;
            peer.rename_group(&g, n).await?;
            println!("-- renamed the group to {}", escape(n));
        }
        Command::GroupLeave => {
            let g = need(current)?;
            peer.leave_group(&g).await?;
            println!(
                "-- asked to leave [{}]; a member confirms it",
                escape(&name_of(peer, &g))
            );
            *current = None;
        }
        Command::GroupHeal => {
            let g = need(current)?;
            peer.group_self_update(&g).await?;
            println!("-- your keys in [{}] are fresh", escape(&name_of(peer, &g)));
        }
        Command::HealAll => {
            let n = peer.heal_all_groups().await?;
            println!("-- your keys are fresh in {n} groups and 1:1 conversations");
        }
        Command::Groups => {
            let groups = peer.groups_list()?;
            if groups.is_empty() {
                println!("-- no groups (create one: /group new <name> <id,id…>)");
            }
            for (i, g) in groups.iter().enumerate() {
                if let Ok(info) = peer.group_info(g) {
                    println!(
                        "  #{} {} ({} members){}",
                        i + 1,
                        escape(&info.name),
                        info.members.len(),
                        if current.as_ref() == Some(g) {
                            "  <- current"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        Command::GroupPick(which) => match pick(peer, which)? {
            Some(g) => {
                println!("-- talking in [{}]", escape(&name_of(peer, &g)));
                *current = Some(g);
            }
            None => println!("!! no group {} (see /groups)", escape(which)),
        },
        Command::Members => {
            let g = need(current)?;
            let info = peer.group_info(&g)?;
            println!("-- [{}], epoch {}:", escape(&info.name), info.epoch);
            for m in info.members {
                println!("  {}  {}", escape(m.client_id.as_str()), m.fingerprint);
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Sends a plain line to group `g`.
pub async fn send_text(peer: &MessagingPeer, g: &GroupId, text: &str) {
    match peer
        .send_group_content(g, &Content::Text(text.to_owned()))
        .await
    {
        Ok(_) => println!("[{}] you: {}", escape(&name_of(peer, g)), escape(text)),
        Err(e) => println!(
            "!! not sent to [{}]: {}",
            escape(&name_of(peer, g)),
            escape(&e.to_string())
        ),
    }
}
