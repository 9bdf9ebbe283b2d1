// The sidebar's list of conversations: people (presence, verified badge, key-change and
// unverified marks) and groups (views/groups.js), each with its latest message and unread count;
// conversations with messages first, most recent first. Updated in place on every `peer-list` event: a row is one
// element for as long as its peer is listed, and only rows whose content changed are redrawn, so a
// click that straddles an update (press before, release after) still lands on its row.
//
// Keyboard: the list is one tab stop (the open conversation's row, or the first); Up and Down
// move between rows, Home and End to the ends, Enter or Space opens the focused conversation.

import { h, icon, paintAvatar, formatShort } from "../util.js";
import { state } from "../state.js";
import { groupKey, paintGroupAvatar } from "./groups.js";

let onSelect = () => {};

function row(peer) {
  const avatar = h("span", { class: "avatar" });
  paintAvatar(avatar, peer.id, peer.online);

  const top = h("div", { class: "peer-top" },
    h("span", { class: "peer-name", text: peer.id }),
    // What the dot and the colours say, for screen readers.
    h("span", { class: "visually-hidden", text: peer.online ? ", online" : ", offline" }),
    peer.verified ? h("span", { class: "badge-verified", title: "Verified: you compared safety numbers" }, icon("shield")) : null,
    peer.lastAt ? h("span", { class: "peer-time", text: formatShort(peer.lastAt) }) : null);

  // The last message (or the unsent draft) in a <bdi>, so its bidi overrides cannot reorder the
  // tags beside it.
  const preview = peer.draft
    ? [h("span", { class: "draft-tag" }, "Draft: "), h("bdi", {}, peer.draft)]
    : peer.lastMessage
      ? [peer.lastOutgoing ? "You: " : "", h("bdi", {}, peer.lastMessage)]
      : [peer.online ? "Online" : "Offline"];

  const bottom = h("div", { class: "peer-bottom" },
    h("span", { class: `peer-preview${!peer.lastMessage && !peer.online ? " offline" : ""}` }, preview),
    peer.keyChanged ? h("span", { class: "tag danger", title: "This contact's safety number changed" }, icon("alert"), "Key changed") : null,
    !peer.keyChanged && peer.original
      ? h("span", { class: "tag warn", title: "An original client: its messages are not signed" }, "Unverified") : null,
    peer.unread > 0 ? h("span", { class: "unread" }, peer.unread > 99 ? "99+" : String(peer.unread),
      h("span", { class: "visually-hidden", text: " unread" })) : null);

  return h("li", {
    class: `peer${peer.unread > 0 ? " has-unread" : ""}`,
    role: "option",
    "aria-selected": String(state.selected === peer.id),
    dataset: { peerId: peer.id, online: String(peer.online) },
    onclick: () => onSelect(peer.id),
  }, avatar, h("div", { class: "peer-body" }, top, bottom));
}

function groupRow(group) {
  const key = groupKey(group.id);
  const avatar = h("span", { class: "avatar" });
  paintGroupAvatar(avatar, group);
  const top = h("div", { class: "peer-top" },
    h("span", { class: "peer-name" }, h("bdi", {}, group.name)),
    h("span", { class: "visually-hidden", text: ", group" }),
    group.lastAt ? h("span", { class: "peer-time", text: formatShort(group.lastAt) }) : null);
  const who = group.lastOutgoing ? "You: " : group.lastSender ? `${group.lastSender}: ` : "";
  const preview = group.lastMessage ? [who, h("bdi", {}, group.lastMessage)] : ["No messages yet"];
  const bottom = h("div", { class: "peer-bottom" },
    h("span", { class: "peer-preview" }, preview),
    group.left ? h("span", { class: "tag", title: "You are no longer in this group" }, "Left") : null,
    group.unread > 0 ? h("span", { class: "unread" }, group.unread > 99 ? "99+" : String(group.unread),
      h("span", { class: "visually-hidden", text: " unread" })) : null);
  return h("li", {
    class: `peer group-row${group.unread > 0 ? " has-unread" : ""}`,
    role: "option",
    "aria-selected": String(state.selected === key),
    dataset: { peerId: key, online: "false" },
    onclick: () => onSelect(key),
  }, avatar, h("div", { class: "peer-body" }, top, bottom));
}

/** The list's entries: groups and people, those with messages first (most recent first). */
function entries(filter) {
  const match = (name) => !filter || name.toLowerCase().includes(filter);
  const groups = (state.groups || []).filter((g) => match(g.name))
    .map((g) => ({ key: groupKey(g.id), at: g.lastAt, item: g, draw: groupRow }));
  const peers = state.peers.filter((p) => match(p.id))
    .map((p) => ({ key: p.id, at: p.lastAt, item: p, draw: row }));
  // Both lists come sorted; a stable merge by latest activity keeps each one's own order.
  const talked = (e) => e.at !== null && e.at !== undefined;
  const out = [];
  const a = groups.filter(talked);
  const b = peers.filter(talked);
  while (a.length && b.length) out.push(a[0].at >= b[0].at ? a.shift() : b.shift());
  return out.concat(a, b, groups.filter((e) => !talked(e)), peers.filter((e) => !talked(e)));
}

/** Row key (a peer id, or `group:<id>`) → its row element and what it was drawn from. */
const rows = new Map();

/** The row of an entry, reused (and redrawn only if its content changed) or new. */
function rowFor(entry) {
  const drawnFrom = JSON.stringify([entry.item, state.selected === entry.key]);
  const known = rows.get(entry.key);
  if (known && known.drawnFrom === drawnFrom) return known.li;
  const fresh = entry.draw(entry.item);
  if (!known) {
    rows.set(entry.key, { li: fresh, drawnFrom });
    return fresh;
  }
  // Same element (its click handler is bound to this peer id), new content and attributes.
  known.li.className = fresh.className;
  known.li.setAttribute("aria-selected", fresh.getAttribute("aria-selected"));
  known.li.dataset.online = fresh.dataset.online;
  known.li.replaceChildren(...fresh.childNodes);
  known.drawnFrom = drawnFrom;
  return known.li;
}

/** Draws the list from `state.peers`, filtered by the search box. */
export function renderPeers() {
  const list = document.getElementById("peer-list");
  const empty = document.getElementById("peer-list-empty");
  const filter = document.getElementById("peer-filter").value.trim().toLowerCase();
  const listed = entries(filter);
  const shown = new Set(listed.map((e) => e.key));
  for (const id of rows.keys()) {
    if (!shown.has(id)) rows.delete(id);
  }
  const wanted = listed.map(rowFor);
  const current = list.children;
  // Rows move only when the order changed (a move is a detach and an insert).
  if (current.length !== wanted.length || wanted.some((li, i) => current[i] !== li)) {
    list.replaceChildren(...wanted);
  }
  empty.hidden = state.peers.length > 0 || (state.groups || []).length > 0;
  // One tab stop: the open conversation's row, else the first.
  const stop = wanted.find((li) => li.getAttribute("aria-selected") === "true") || wanted[0];
  for (const li of wanted) li.tabIndex = li === stop ? 0 : -1;
}

function onListKey(e) {
  const rows = Array.from(document.querySelectorAll("#peer-list li.peer"));
  const at = rows.indexOf(document.activeElement);
  if (at < 0) return;
  let next = null;
  if (e.key === "ArrowDown" && !e.altKey) next = Math.min(at + 1, rows.length - 1);
  else if (e.key === "ArrowUp" && !e.altKey) next = Math.max(at - 1, 0);
  else if (e.key === "Home") next = 0;
  else if (e.key === "End") next = rows.length - 1;
  else if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    onSelect(rows[at].dataset.peerId);
    return;
  }
  if (next === null) return;
  e.preventDefault();
  for (const li of rows) li.tabIndex = -1;
  rows[next].tabIndex = 0;
  rows[next].focus();
}

/** Wires the search box; `select(peerId)` opens a conversation. */
export function initPeerList(select) {
  onSelect = select;
  document.getElementById("peer-filter").addEventListener("input", renderPeers);
  document.getElementById("peer-list").addEventListener("keydown", onListKey);
}
