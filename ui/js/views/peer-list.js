// The sidebar's list of people: presence, verified badge, key-change and unverified marks,
// latest message and unread count. Updated in place on every `peer-list` event: a row is one
// element for as long as its peer is listed, and only rows whose content changed are redrawn, so a
// click that straddles an update (press before, release after) still lands on its row.

import { h, icon, paintAvatar, formatShort } from "../util.js";
import { state } from "../state.js";

let onSelect = () => {};

function row(peer) {
  const avatar = h("span", { class: "avatar" });
  paintAvatar(avatar, peer.id, peer.online);

  const top = h("div", { class: "peer-top" },
    h("span", { class: "peer-name", text: peer.id }),
    peer.verified ? h("span", { class: "badge-verified", title: "Verified: you compared safety numbers" }, icon("shield")) : null,
    peer.lastAt ? h("span", { class: "peer-time", text: formatShort(peer.lastAt) }) : null);

  // The last message in a <bdi>, so its bidi overrides cannot reorder the tags beside it.
  const preview = peer.lastMessage
    ? [peer.lastOutgoing ? "You: " : "", h("bdi", {}, peer.lastMessage)]
    : [peer.online ? "Online" : "Offline"];

  const bottom = h("div", { class: "peer-bottom" },
    h("span", { class: `peer-preview${!peer.lastMessage && !peer.online ? " offline" : ""}` }, preview),
    peer.keyChanged ? h("span", { class: "tag danger", title: "This contact's safety number changed" }, icon("alert"), "Key changed") : null,
    !peer.keyChanged && peer.original
      ? h("span", { class: "tag warn", title: "An original client: its messages are not signed" }, "Unverified") : null,
    peer.unread > 0 ? h("span", { class: "unread", text: peer.unread > 99 ? "99+" : String(peer.unread) }) : null);

  return h("li", {
    class: `peer${peer.unread > 0 ? " has-unread" : ""}`,
    role: "option",
    "aria-selected": String(state.selected === peer.id),
    dataset: { peerId: peer.id, online: String(peer.online) },
    onclick: () => onSelect(peer.id),
  }, avatar, h("div", { class: "peer-body" }, top, bottom));
}

/** Peer id → its row element and what it was drawn from. */
const rows = new Map();

/** The row of `peer`, reused (and redrawn only if its content changed) or new. */
function rowFor(peer) {
  const drawnFrom = JSON.stringify([peer, state.selected === peer.id]);
  const known = rows.get(peer.id);
  if (known && known.drawnFrom === drawnFrom) return known.li;
  const fresh = row(peer);
  if (!known) {
    rows.set(peer.id, { li: fresh, drawnFrom });
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
  const peers = state.peers.filter((p) => !filter || p.id.toLowerCase().includes(filter));
  const shown = new Set(peers.map((p) => p.id));
  for (const id of rows.keys()) {
    if (!shown.has(id)) rows.delete(id);
  }
  const wanted = peers.map(rowFor);
  const current = list.children;
  // Rows move only when the order changed (a move is a detach and an insert).
  if (current.length !== wanted.length || wanted.some((li, i) => current[i] !== li)) {
    list.replaceChildren(...wanted);
  }
  empty.hidden = state.peers.length > 0;
}

/** Wires the search box; `select(peerId)` opens a conversation. */
export function initPeerList(select) {
  onSelect = select;
  document.getElementById("peer-filter").addEventListener("input", renderPeers);
}
