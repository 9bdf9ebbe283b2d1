// The live region: tells screen readers about new messages, politely (after what they are
// reading). One short sentence per message; the list itself is not live, so opening or paging
// a conversation reads nothing out.

import { peerById } from "../state.js";

/** Longest part of a message read out, in characters. */
const ANNOUNCE_CHARS = 140;

/** Announces an incoming message (not a change to one: an edit, a reaction, a delete). */
export function announceMessage(m) {
  if (m.outgoing || (m.rev || 0) > 0) return;
  const peer = peerById(m.peerId);
  const who = peer ? peer.id : m.peerId;
  const text = m.body.length > ANNOUNCE_CHARS ? `${m.body.slice(0, ANNOUNCE_CHARS)}…` : m.body;
  announce(`New message from ${who}: ${text}`);
}

/** Reads `text` out through the live region. */
export function announce(text) {
  const region = document.getElementById("announcer");
  // A fresh node each time, so the same sentence twice is still announced twice.
  const line = document.createElement("p");
  line.textContent = text;
  region.replaceChildren(line);
}
