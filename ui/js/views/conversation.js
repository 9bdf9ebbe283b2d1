// The open conversation: header, key-change / unverified banners, the message list and the
// composer.
//
// History is paged and windowed: opening a conversation loads the latest PAGE messages (the
// first screen); older pages (OLDER_PAGE) load as the top of the list comes within
// LOAD_MARGIN_PX of the view, keeping the scroll position. At most MAX_IN_DOM messages stay in
// the page: scrolling far back drops the newest ones, and scrolling down again loads them back
// (and drops the oldest). A conversation of any length opens in the time of one page and
// scrolls at the cost of a window, not of its whole history. Opening at a message (a search
// result) loads the window around it instead, and older and newer pages load from there.
//
// The composer's text is the conversation's draft: saved (debounced) as it changes and when
// another conversation opens, restored when this one opens again, also after a restart.

import { api } from "../api.js";
import {
  DELIVERY_STATUS_ORDER, DeliveryStatus, ErrorKind, TransferState, TYPING_RESEND_MS, TYPING_SHOWN_MS,
} from "../contract.js";
import { state, peerById } from "../state.js";
import { h, icon, paintAvatar, formatTime, formatDay, dayKey } from "../util.js";
import { messageText } from "../text.js";
import { confirmLink } from "./link-dialog.js";
import { fileBlock, updateProgress } from "./files.js";
import { clearNotices, showNotice } from "./toasts.js";
import { openVerify } from "./verify.js";
import {
  actionBar, changeable, composerContext, composerKeys, messageShortcutsFor, openVersions,
  quoteButton, reactionRow, selectableMessages, setActionsTabbable,
} from "./message-actions.js";

/** The first page: one screen and a little more, so a conversation opens at once. */
const PAGE = 50;
/** Older pages, loaded while scrolling up: bigger, so scrolling back far takes few round trips. */
const OLDER_PAGE = 200;
/** Messages from one side within this many ms are drawn as one group. */
const GROUP_MS = 5 * 60 * 1000;
/** Older history loads when the top of the list comes this close (px) to the view. */
const LOAD_MARGIN_PX = 600;
/** Messages kept in the DOM at most (three older pages). */
const MAX_IN_DOM = 3 * OLDER_PAGE;
/** How close to the bottom (px) counts as "at the bottom" for following new messages. */
const STICK_PX = 48;
/** A draft is saved this long (ms) after the last keystroke. */
const DRAFT_SAVE_MS = 400;
/** How long (ms) a message opened from a search stays highlighted. */
export const FOUND_HIGHLIGHT_MS = 4000;
/** Typing counts as stopped this long (ms) after the last keystroke (1:1 and groups). */
export const TYPING_IDLE_MS = 5000;

const STATUS = {
  [DeliveryStatus.PENDING]: { icon: "clock", label: "Waiting for a connection" },
  [DeliveryStatus.SENT]: { icon: "check", label: "Sent" },
  [DeliveryStatus.QUEUED]: { icon: "check", label: "Queued: delivered when they come online" },
  [DeliveryStatus.DELIVERED]: { icon: "check2", label: "Delivered" },
  [DeliveryStatus.READ]: { icon: "check2", label: "Read" },
  [DeliveryStatus.FAILED]: { icon: "alert", label: "Not delivered" },
};

/**
 * Whether `next` is news compared with `shown` (the command's answer can arrive after events).
 * The backend sends statuses already merged (which may replace which is decided there only), so
 * the later one in its order is the newer.
 */
function advances(shown, next) {
  return DELIVERY_STATUS_ORDER.indexOf(next) > DELIVERY_STATUS_ORDER.indexOf(shown);
}

let current = null; // peer id shown
let generation = 0; // bumps on every open, so late pages of an old conversation are dropped
let oldestSeq = null;
let hasMore = false; // older messages exist before the window
let newestSeq = null;
let hasNewer = false; // newer messages exist after the window (it was scrolled far back)
let loading = false;
const elements = new Map(); // message id -> <li>
let firstPageShown = false;
let arrivedEarly = []; // messages that arrived while the first page was loading
let draftTimer = null;
let draftPeer = null; // the conversation whose draft is in the composer
const shown = new Map(); // message id -> the message as last drawn
let ctx = null; // the composer's reply / edit state (composerContext), made at init
let typingSentAt = 0; // when "started typing" was last sent
let typingIdle = null; // timer: typing stopped
let typingShown = null; // timer: hides "… is typing"

const $ = (id) => document.getElementById(id);

// ---------- rendering one message ----------

function messageElement(m) {
  const li = h("li", {
    class: `msg ${m.outgoing ? "out" : "in"}`,
    tabindex: "-1",
    dataset: { id: m.id, seq: String(m.seq), at: String(m.at), day: String(dayKey(m.at)), status: m.status },
  });
  fillMessage(li, m);
  return li;
}

/** Ours, sent from another device of this account: "from laptop" before the time (1:1 and groups). */
export function appendFromDevice(meta, m) {
  if (m.fromDevice) meta.append(h("span", { class: "from-device", text: `from ${m.fromDevice}` }));
}

function fillMessage(li, m) {
  shown.set(m.id, m);
  li.dataset.status = m.status;
  li.dataset.rev = String(m.rev || 0);
  li.dataset.wire = m.wireId || "";
  li.classList.toggle("unverified", !m.outgoing && !m.authenticated);
  li.classList.toggle("failed", m.status === DeliveryStatus.FAILED);
  li.classList.toggle("deleted", !!m.deleted);
  const meta = h("span", { class: "meta" });
  if (m.edited && !m.deleted) {
    meta.append(h("button", {
      class: "edited", type: "button", tabindex: "-1", title: "Edited: show earlier versions",
      "aria-label": "Edited: show earlier versions", onclick: () => openVersions(current, m),
    }, "edited"));
  }
  appendFromDevice(meta, m);
  meta.append(h("time", { text: formatTime(m.at) }));
  if (m.outgoing) {
    const s = STATUS[m.status] || STATUS.sent;
    const two = m.status === DeliveryStatus.DELIVERED || m.status === DeliveryStatus.READ;
    const svg = icon(s.icon, two ? "status-check2" : "status-icon");
    if (m.status === DeliveryStatus.READ) svg.classList.add("status-read");
    meta.append(svg, h("span", { class: "visually-hidden", text: s.label }));
    meta.title = s.label;
  }
  // <bdi dir=auto>: the text takes the direction of its first strong character (Arabic, Hebrew
  // right to left), and a sender's bidi overrides (U+202E …) stay inside their own text and
  // cannot reorder the time and delivery status after it. Web links become links that ask first.
  let text;
  if (m.deleted) text = h("span", { class: "text tombstone", text: "This message was deleted" });
  else if (m.file) text = fileBlock(current, m);
  else text = h("bdi", { class: "text", dir: "auto" }, messageText(m.body, confirmLink));
  const bubble = h("div", { class: m.file && !m.deleted ? "bubble has-file" : "bubble" }, quoteButton(m, jumpTo), text, meta);
  const parts = [];
  if (!m.outgoing && !m.authenticated) {
    parts.push(h("span", {
      class: "msg-note warn",
      title: "Sent by an original client: the server vouches for the sender, no signature does",
    }, icon("alert"), "Unverified sender"));
  }
  parts.push(bubble);
  const reactions = reactionRow(current, m, upsertMessage);
  if (reactions) parts.push(reactions);
  if (m.outgoing && m.status === DeliveryStatus.FAILED) {
    parts.push(h("span", { class: "msg-note danger" }, icon("alert"), "Not delivered"));
  }
  parts.push(actionBar(current, m, { reply: (x) => ctx.startReply(x), edit: (x) => ctx.startEdit(x), upsert: upsertMessage }));
  li.replaceChildren(...parts.filter(Boolean));
  if (li.contains(document.activeElement) || document.activeElement === li) setActionsTabbable(li, true);
}

/** Goes to the message a reply answers: in the window already, or the window around it. */
function jumpTo(r) {
  const li = $("message-list").querySelector(`li.msg[data-wire="${CSS.escape(r.messageId)}"]`);
  if (li) showFound(li);
  else if (r.seq !== null && r.seq !== undefined) openConversation(current, r.seq);
  else showNotice({ kind: ErrorKind.INVALID_INPUT, message: "That message is no longer on this device." });
}

function daySeparator(at) {
  return h("li", { class: "day", dataset: { day: String(dayKey(at)) }, text: formatDay(at) });
}

/** Sets the grouping classes of two neighbouring list items. */
function link(prev, next) {
  if (!prev || !next) return;
  const same = prev.classList.contains("msg") && next.classList.contains("msg")
    && prev.classList.contains("out") === next.classList.contains("out")
    && prev.dataset.day === next.dataset.day
    && Number(next.dataset.at) - Number(prev.dataset.at) < GROUP_MS
    && !prev.classList.contains("unverified") && !next.classList.contains("unverified");
  prev.classList.toggle("cont-next", same);
  next.classList.toggle("cont", same);
}

/** Builds items for `messages` (oldest first); `prevDay` is the day of the item before them. */
function buildItems(messages, prevDay) {
  const items = [];
  let day = prevDay;
  for (const m of messages) {
    const d = String(dayKey(m.at));
    if (d !== day) {
      items.push(daySeparator(m.at));
      day = d;
    }
    const li = messageElement(m);
    elements.set(m.id, li);
    items.push(li);
  }
  for (let i = 1; i < items.length; i++) link(items[i - 1], items[i]);
  return items;
}

function lastMessageItem() {
  const list = $("message-list");
  const last = list.lastElementChild;
  return last && last.classList.contains("msg") ? last : null;
}

function atBottom() {
  const box = $("messages");
  return box.scrollTop + box.clientHeight >= box.scrollHeight - STICK_PX;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// ---------- paging ----------

async function loadOlder() {
  if (loading || !hasMore || current === null) return;
  loading = true;
  const gen = generation;
  const top = $("history-top");
  top.classList.add("loading");
  let ok = false;
  try {
    const page = await api.loadMessages(current, oldestSeq, OLDER_PAGE);
    if (gen !== generation) return;
    prepend(page.messages);
    hasMore = page.hasMore;
    ok = true;
  } catch (err) {
    showNotice(err);
  } finally {
    if (gen === generation) {
      loading = false;
      top.classList.remove("loading");
    }
  }
  // Still near the top (a fast scroll, or pages shorter than the view): keep going.
  if (ok && gen === generation) maybeLoadOlder();
}

/** Loads the previous page when the top of the history is within LOAD_MARGIN_PX of the view,
 * or the next one when the bottom is and newer messages were dropped from the window. */
function maybeLoadOlder() {
  if (loading) return;
  const box = $("messages");
  if (hasMore && box.scrollTop < LOAD_MARGIN_PX) loadOlder();
  else if (hasNewer && box.scrollHeight - box.scrollTop - box.clientHeight < LOAD_MARGIN_PX) loadNewer();
}

async function loadNewer() {
  if (loading || !hasNewer || current === null) return;
  loading = true;
  const gen = generation;
  let ok = false;
  try {
    const page = await api.loadMessages(current, null, OLDER_PAGE, newestSeq);
    if (gen !== generation) return;
    appendPage(page.messages);
    hasNewer = page.hasMore;
    ok = true;
  } catch (err) {
    showNotice(err);
  } finally {
    if (gen === generation) loading = false;
  }
  if (ok && gen === generation) maybeLoadOlder();
}

/** The message items of the list, in order. */
function messageItems() {
  return $("message-list").querySelectorAll("li.msg");
}

/** Drops `count` messages from the bottom (newest), with day separators left without one. */
function trimBottom(count) {
  const items = messageItems();
  for (let i = items.length - count; i < items.length; i++) {
    elements.delete(items[i].dataset.id);
    shown.delete(items[i].dataset.id);
    items[i].remove();
  }
  const list = $("message-list");
  while (list.lastElementChild && list.lastElementChild.classList.contains("day")) list.lastElementChild.remove();
  const last = list.lastElementChild;
  if (last) {
    last.classList.remove("cont-next");
    newestSeq = Number(last.dataset.seq);
  }
  hasNewer = true;
}

/** Drops `count` messages from the top (oldest), keeping what is on screen where it is. */
function trimTop(count) {
  const box = $("messages");
  const list = $("message-list");
  const before = box.scrollHeight;
  const items = messageItems();
  for (let i = 0; i < count && i < items.length; i++) {
    elements.delete(items[i].dataset.id);
    shown.delete(items[i].dataset.id);
    items[i].remove();
  }
  while (list.firstElementChild && list.firstElementChild.classList.contains("day")
    && (!list.firstElementChild.nextElementSibling || list.firstElementChild.nextElementSibling.classList.contains("day"))) {
    list.firstElementChild.remove();
  }
  const first = list.firstElementChild;
  if (first && first.classList.contains("msg")) {
    // Its day's separator went with the dropped messages: put one back.
    first.classList.remove("cont");
    list.prepend(daySeparator(Number(first.dataset.at)));
  }
  box.scrollTop -= before - box.scrollHeight;
  const firstMsg = list.querySelector("li.msg");
  if (firstMsg) oldestSeq = Number(firstMsg.dataset.seq);
  hasMore = true;
}

/** Appends a page of newer messages (walking forward again) and trims the top to the window. */
function appendPage(messages) {
  if (messages.length === 0) return;
  const list = $("message-list");
  const prev = lastMessageItem();
  const prevDay = list.lastElementChild ? list.lastElementChild.dataset.day : null;
  const items = buildItems(messages, prevDay);
  list.append(...items);
  if (items[0].classList.contains("msg")) link(prev, items[0]);
  newestSeq = messages[messages.length - 1].seq;
  const excess = messageItems().length - MAX_IN_DOM;
  if (excess > 0) trimTop(excess);
}

function prepend(messages) {
  if (messages.length === 0) return;
  const list = $("message-list");
  const box = $("messages");
  const oldFirst = list.firstElementChild;
  const items = buildItems(messages, null);
  // The old first item is the separator of a day the new page may already have opened.
  if (oldFirst && oldFirst.classList.contains("day")) {
    const lastNew = items[items.length - 1];
    if (lastNew.dataset.day === oldFirst.dataset.day) oldFirst.remove();
  }
  const before = box.scrollHeight;
  list.prepend(...items);
  link(items[items.length - 1], items[items.length - 1].nextElementSibling);
  box.scrollTop += box.scrollHeight - before;
  oldestSeq = messages[0].seq;
  // Dropping from the bottom does not move what is on screen.
  const excess = messageItems().length - MAX_IN_DOM;
  if (excess > 0) trimBottom(excess);
}

// ---------- header and banners ----------

function renderHeader(peer) {
  const avatar = $("conv-avatar");
  avatar.replaceChildren();
  paintAvatar(avatar, peer.id, peer.online);
  const name = $("conv-name");
  name.replaceChildren(peer.id);
  if (peer.verified) {
    name.append(h("span", { class: "badge-verified", title: "Verified: you compared safety numbers" }, icon("shield")));
  }
  if (peer.mls) {
    // The envelope: MLS (docs/mls.md). Original clients keep their "Unverified" banner below.
    name.append(h("span", {
      class: "tag mls",
      id: "conv-envelope",
      title: "MLS: end-to-end encrypted with post-quantum key agreement, forward secrecy and post-compromise security",
    }, "MLS · post-quantum, forward secret"));
  }
  const sub = $("conv-sub");
  const parts = [peer.online ? "Online" : "Offline"];
  if (peer.verified) parts.push("Verified");
  else if (peer.fingerprint) parts.push("Not yet verified");
  sub.textContent = parts.join(" · ");

  const keyBanner = $("key-banner");
  keyBanner.hidden = !peer.keyChanged;
  if (peer.keyChanged) {
    $("key-banner-title").textContent = `${peer.id}'s safety number changed`;
    $("key-banner-body").textContent =
      "They may have reinstalled Lattice — or someone may be impersonating them. "
      + "Messages to and from the new key are blocked until you accept it.";
  }
  const unverified = $("unverified-banner");
  const original = peer.original;
  unverified.hidden = !original || peer.keyChanged;
  if (original) {
    $("unverified-banner-body").textContent =
      `${peer.id} uses an original client: its messages are encrypted but not signed, so the sender cannot be verified.`;
  }
  $("composer-input").placeholder = `Message ${peer.id}`;
  $("composer-input").disabled = peer.keyChanged;
  updateSendButton();
}

function updateSendButton() {
  const input = $("composer-input");
  $("composer-send").disabled = input.disabled || input.value.trim().length === 0;
}

// ---------- public ----------

/**
 * Opens the conversation with `peerId`: header, then the latest page of history — or, with
 * `at` (a message's `seq`), the window around that message, scrolled to it and highlighted.
 */
export async function openConversation(peerId, at = null) {
  const peer = peerById(peerId);
  if (!peer) return;
  const switching = current !== peerId;
  if (switching) flushDraft();
  generation += 1;
  const gen = generation;
  current = peerId;
  elements.clear();
  oldestSeq = null;
  hasMore = false;
  newestSeq = null;
  hasNewer = false;
  loading = true;
  $("pane-empty").hidden = true;
  $("conversation").hidden = false;
  $("message-list").replaceChildren();
  shown.clear();
  if (switching) {
    stopTyping();
    ctx.set(null);
    hideTyping();
  }
  renderHeader(peer);
  firstPageShown = false;
  arrivedEarly = [];
  if (switching) restoreDraft(peerId, gen);
  try {
    let messages;
    if (at === null) {
      const page = await api.loadMessages(peerId, null, PAGE);
      messages = page.messages;
      hasMore = page.hasMore;
    } else {
      // The message and what came before it, and what came after it.
      const [older, newer] = await Promise.all([
        api.loadMessages(peerId, at + 1, PAGE),
        api.loadMessages(peerId, null, PAGE, at),
      ]);
      messages = older.messages.concat(newer.messages);
      hasMore = older.hasMore;
      hasNewer = newer.hasMore;
    }
    if (gen !== generation) return;
    $("message-list").replaceChildren(...buildItems(messages, null));
    oldestSeq = messages.length ? messages[0].seq : null;
    newestSeq = messages.length ? messages[messages.length - 1].seq : null;
    firstPageShown = true;
    for (const m of arrivedEarly) upsertMessage(m);
    arrivedEarly = [];
    const target = at === null ? null : $("message-list").querySelector(`li.msg[data-seq="${Number(at)}"]`);
    if (target) showFound(target);
    else scrollToBottom();
    loading = false;
    maybeLoadOlder();
    if (peer.unread > 0 && document.hasFocus()) api.markRead(peerId).catch(showNotice);
  } catch (err) {
    if (gen === generation) loading = false;
    showNotice(err);
  }
  if (at === null && gen === generation && !$("composer-input").disabled) $("composer-input").focus();
}

/** Scrolls a message found by a search into the middle of the view, marks it and focuses it. */
function showFound(li) {
  for (const old of $("message-list").querySelectorAll("li.msg.found")) old.classList.remove("found");
  li.scrollIntoView({ block: "center" });
  li.classList.add("found");
  li.focus({ preventScroll: true });
  setTimeout(() => li.classList.remove("found"), FOUND_HIGHLIGHT_MS);
}

// ---------- drafts ----------

/** Saves the composer's text as the draft of the conversation it belongs to, now. */
function flushDraft() {
  clearTimeout(draftTimer);
  draftTimer = null;
  if (draftPeer === null) return;
  api.saveDraft(draftPeer, $("composer-input").value).catch(showNotice);
}

function scheduleDraftSave() {
  clearTimeout(draftTimer);
  draftTimer = setTimeout(flushDraft, DRAFT_SAVE_MS);
}

/** Puts the draft of `peerId` into the composer (empty if none). */
async function restoreDraft(peerId, gen) {
  const input = $("composer-input");
  draftPeer = null;
  input.value = "";
  autosize();
  updateSendButton();
  let text = null;
  try {
    text = await api.loadDraft(peerId);
  } catch (err) {
    showNotice(err);
  }
  if (gen !== generation) return;
  draftPeer = peerId;
  // Something typed while the draft was on its way wins over it.
  if (text && input.value.length === 0) {
    input.value = text;
    autosize();
    updateSendButton();
  }
}

/** The peer list changed: refresh the header of the open conversation. */
export function refreshConversationPeer() {
  if (current === null) return;
  const peer = peerById(current);
  if (peer) renderHeader(peer);
}

/** A new or updated message (from an event or from our own send). */
export function upsertMessage(m) {
  if (m.peerId !== current) return;
  if (!firstPageShown) {
    // The first page is on its way and will replace the list: apply this after it.
    arrivedEarly.push(m);
    return;
  }
  const existing = elements.get(m.id);
  if (existing) {
    const before = shown.get(m.id);
    const fileMoved = m.file && before && before.file
      && (before.file.state !== m.file.state || before.file.local !== m.file.local);
    if (advances(existing.dataset.status, m.status) || (m.rev || 0) > Number(existing.dataset.rev) || fileMoved) {
      fillMessage(existing, m);
    }
    return;
  }
  if (hasNewer) {
    // The window shows older history; this joins the end when the person scrolls down, or at
    // once if they just wrote it.
    if (m.outgoing) openConversation(m.peerId);
    return;
  }
  const stick = m.outgoing || atBottom();
  const list = $("message-list");
  const prev = lastMessageItem();
  const prevDay = list.lastElementChild ? list.lastElementChild.dataset.day : null;
  const items = buildItems([m], prevDay);
  list.append(...items);
  if (items.length === 1) link(prev, items[0]);
  if (oldestSeq === null) oldestSeq = m.seq;
  newestSeq = m.seq;
  // A long live chat: keep the window, dropping the oldest (with some slack, not one by one).
  if (stick && messageItems().length > MAX_IN_DOM + PAGE) trimTop(messageItems().length - MAX_IN_DOM);
  if (stick) scrollToBottom();
  if (!m.outgoing) hideTyping();
  if (!m.outgoing && document.hasFocus()) api.markRead(m.peerId).catch(showNotice);
}

/** A file transfer moved on: the bar moves in place; a new state redraws the message. */
export function onTransfer(t) {
  if (t.peerId !== current) return;
  const li = elements.get(t.messageId);
  const m = shown.get(t.messageId);
  if (!li || !m || !m.file) return;
  const file = {
    ...m.file, state: t.state, done: t.done, error: t.error,
    local: m.file.local || (!m.outgoing && t.state === TransferState.COMPLETED),
  };
  const next = { ...m, file };
  shown.set(m.id, next);
  if (!updateProgress(li, next)) fillMessage(li, next);
}

/** A message was deleted on this device. */
export function removeMessage(r) {
  if (r.peerId !== current) return;
  const li = elements.get(r.id);
  if (!li) return;
  const prev = li.previousElementSibling;
  const next = li.nextElementSibling;
  elements.delete(r.id);
  shown.delete(r.id);
  li.remove();
  // A day left without messages loses its separator.
  if (prev && prev.classList.contains("day") && (!next || next.classList.contains("day"))) prev.remove();
  if (prev && prev.classList.contains("msg")) prev.classList.remove("cont-next");
  if (next && next.classList.contains("msg")) {
    next.classList.remove("cont");
    if (prev && prev.classList.contains("msg")) link(prev, next);
  }
}

/** Someone is typing (or stopped): "bob is typing…" under the messages, for a while. */
export function onTyping(t) {
  if (t.peerId !== current) return;
  if (!t.typing) {
    hideTyping();
    return;
  }
  $("typing-indicator").textContent = `${t.peerId} is typing…`;
  clearTimeout(typingShown);
  typingShown = setTimeout(hideTyping, TYPING_SHOWN_MS);
}

function hideTyping() {
  clearTimeout(typingShown);
  typingShown = null;
  $("typing-indicator").textContent = "";
}

// ---------- selecting a message, replying, editing ----------

/** Keyboard shortcuts on the selected message (or the last fitting one). */
export const messageShortcuts = messageShortcutsFor({
  open: () => current !== null,
  items: () => Array.from(messageItems()),
  message: (li) => shown.get(li.dataset.id),
  chat: () => current,
  get ctx() { return ctx; },
  upsert: (m) => upsertMessage(m),
});

function noteTyping() {
  if (current === null) return;
  clearTimeout(typingIdle);
  if ($("composer-input").value.trim().length === 0) {
    stopTyping();
    return;
  }
  if (Date.now() - typingSentAt > TYPING_RESEND_MS) {
    typingSentAt = Date.now();
    api.typing(current, true).catch(() => {});
  }
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdle);
  typingIdle = null;
  if (typingSentAt !== 0 && current !== null) api.typing(current, false).catch(() => {});
  typingSentAt = 0;
}

/** The peer currently open, or null. */
export function currentPeer() {
  return current;
}

/** Hides the 1:1 conversation (a group opens instead): its draft is kept, typing stops. */
export function closeConversation() {
  if (current === null) return;
  flushDraft();
  stopTyping();
  ctx.set(null);
  hideTyping();
  generation += 1;
  current = null;
  elements.clear();
  shown.clear();
  $("conversation").hidden = true;
}

/** Focuses the composer of the open conversation (a keyboard shortcut). */
export function focusComposer() {
  const input = $("composer-input");
  if (current !== null && !input.disabled) input.focus();
}

/** Marks the open conversation read (a keyboard shortcut). */
export function markCurrentRead() {
  if (current !== null) api.markRead(current).catch(showNotice);
}

async function send() {
  const input = $("composer-input");
  const text = input.value;
  if (current === null || text.trim().length === 0) return;
  input.value = "";
  autosize();
  updateSendButton();
  stopTyping();
  const mode = ctx.mode;
  ctx.set(null);
  try {
    const message = mode && mode.kind === "edit"
      ? await api.editMessage(current, mode.m.seq, text)
      : await api.sendMessage(current, text, mode && mode.kind === "reply" ? mode.m.seq : null);
    upsertMessage(message);
    // Sent: the draft is gone (unless something new was typed meanwhile).
    scheduleDraftSave();
  } catch (err) {
    // Nothing typed is lost: put it back.
    if (input.value.length === 0) input.value = text;
    if (ctx.mode === null) ctx.set(mode);
    autosize();
    updateSendButton();
    showNotice(err);
  }
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 168)}px`;
}

export function initConversation() {
  const input = $("composer-input");
  ctx = composerContext({ prefix: "composer", form: "composer", input: "composer-input" },
    () => { autosize(); updateSendButton(); }, (m) => m.peerId);
  composerKeys(input, ctx, send, () => ctx.startEdit(messageShortcuts.last(changeable)));
  input.addEventListener("input", () => {
    autosize();
    updateSendButton();
    scheduleDraftSave();
    noteTyping();
  });

  // Selecting messages: ↑ ↓ move between them; the selected one's buttons join the tab order.
  selectableMessages($("message-list"), maybeLoadOlder);
  // The window closing (or hiding to the tray) saves what is typed.
  window.addEventListener("blur", () => { if (draftTimer !== null) flushDraft(); });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });

  // A scroll listener rather than an IntersectionObserver: the observer samples once per frame
  // and misses a jump to the top that happens in the same frame as a prepend.
  $("messages").addEventListener("scroll", maybeLoadOlder, { passive: true });

  $("conv-verify").addEventListener("click", () => current && openVerify(current));
  $("key-banner-compare").addEventListener("click", () => current && openVerify(current));
  $("key-banner-accept").addEventListener("click", async () => {
    if (current === null) return;
    try {
      // The safety number shown for comparison; the backend pins only a key with exactly it.
      const peer = peerById(current);
      await api.acceptKeyChange(current, peer ? peer.pendingFingerprint : null);
      clearNotices(ErrorKind.KEY_CHANGED);
    } catch (err) {
      showNotice(err);
    }
  });
  window.addEventListener("focus", () => {
    const peer = current && peerById(current);
    if (peer && peer.unread > 0) api.markRead(current).catch(showNotice);
  });
}
