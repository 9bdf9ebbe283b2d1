// Groups: the New group dialog, a group's conversation (messages with their senders, files
// with their previews, progress and actions as in a 1:1 chat, system lines for joins, leaves,
// removals, renames and key changes) and its member panel (names and safety numbers, invite,
// remove, rename, leave).
//
// A group's messages take the actions of a 1:1 chat's (message-actions.js): reply with a quote
// that jumps to the quoted line, edit and delete our own (for everyone), react; ↑ ↓ move between
// lines and the selected one's buttons join the tab order; the same shortcuts apply.
//
// The group list comes from the backend (`group-list`, in `state.groups`); the sidebar draws it
// beside the 1:1 chats (peer-list.js). A group's row and selection use the key `group:<id>`.
// State flows one way: this view asks the backend and redraws from what it answers and from
// the `group-message` events; it keeps only what is on screen.

import { api, on } from "../api.js";
import { DELIVERY_STATUS_ORDER, DeliveryStatus, ErrorKind, Event, TYPING_RESEND_MS } from "../contract.js";
import { state } from "../state.js";
import { h, icon, paintAvatar, formatTime, formatDay, dayKey } from "../util.js";
import { messageText } from "../text.js";
import { confirmLink } from "./link-dialog.js";
import { announce } from "./announcer.js";
import { openGroupExport } from "./backup.js";
import { FOUND_HIGHLIGHT_MS, TYPING_IDLE_MS, appendFromDevice } from "./conversation.js";
import { fileBlock, sendBlobs, updateProgress } from "./files.js";
import { showNotice } from "./toasts.js";
import {
  actionBar, changeable, composerContext, composerKeys, messageShortcutsFor, openVersions,
  quoteButton, reactionRow, selectableMessages, setActionsTabbable,
} from "./message-actions.js";

/** Lines per page of a group's history. */
const PAGE = 50;
/** Older pages loaded at most to reach a line opened from a search (beyond: the oldest shown). */
const MAX_FIND_PAGES = 200;
/** Older lines load when the top of the list comes this close (px) to the view. */
const LOAD_MARGIN_PX = 400;
/** How close to the bottom (px) counts as "at the bottom" for following new lines. */
const STICK_PX = 48;
/** Longest part of a message read out to screen readers, in characters. */
const ANNOUNCE_CHARS = 140;

const KEY_PREFIX = "group:";

const STATUS = {
  [DeliveryStatus.PENDING]: { icon: "clock", label: "Waiting for a connection" },
  [DeliveryStatus.SENT]: { icon: "check", label: "Sent to the group" },
  [DeliveryStatus.FAILED]: { icon: "alert", label: "Not sent" },
};

let current = null; // group id shown
const typers = new Set(); // members typing in the open group (the library ends each by itself)
let typingSentAt = 0; // when "started typing" was last sent to the open group
let typingIdle = null; // timer: typing stopped
let generation = 0;
let oldestSeq = null;
let hasMore = false;
let loading = false;
const elements = new Map(); // line id -> <li>
const shown = new Map(); // line id -> the line as last drawn
let ctx = null; // the composer's reply / edit state (composerContext), made at init
let onSelect = () => {};

const $ = (id) => document.getElementById(id);

/** The sidebar key of group `id`. */
export function groupKey(id) {
  return `${KEY_PREFIX}${id}`;
}

/** The group id of a sidebar key, or null for a 1:1 chat's. */
export function groupOfKey(key) {
  return typeof key === "string" && key.startsWith(KEY_PREFIX) ? key.slice(KEY_PREFIX.length) : null;
}

/** The group with this id, if listed. */
export function groupById(id) {
  return (state.groups || []).find((g) => g.id === id) || null;
}

/** The open group's id, or null. */
export function currentGroup() {
  return current;
}

/** Paints a group's avatar: its initial on a stable colour, with a small group mark. */
export function paintGroupAvatar(el, group) {
  el.replaceChildren();
  paintAvatar(el, group.name, false);
  el.classList.add("group");
  el.append(h("span", { class: "group-mark" }, icon("users")));
}

// ---------- the conversation ----------

function lineElement(m) {
  if (m.system) {
    return h("li", { class: "system-line", dataset: { id: m.id, seq: String(m.seq), day: String(dayKey(m.at)) } },
      h("bdi", { dir: "auto" }, m.body), h("time", { text: ` · ${formatTime(m.at)}` }));
  }
  const li = h("li", {
    class: `msg ${m.outgoing ? "out" : "in"}`,
    tabindex: "-1",
    dataset: { id: m.id, seq: String(m.seq), day: String(dayKey(m.at)), sender: m.sender, status: m.status },
  });
  fillLine(li, m);
  return li;
}

/** The chat the message actions name. */
function chat() {
  return { groupId: current };
}

function fillLine(li, m) {
  shown.set(m.id, m);
  li.dataset.status = m.status;
  li.dataset.rev = String(m.rev || 0);
  li.dataset.wire = m.wireId || "";
  li.classList.toggle("failed", m.status === DeliveryStatus.FAILED);
  li.classList.toggle("deleted", !!m.deleted);
  const meta = h("span", { class: "meta" });
  if (m.edited && !m.deleted) {
    meta.append(h("button", {
      class: "edited", type: "button", tabindex: "-1", title: "Edited: show earlier versions",
      "aria-label": "Edited: show earlier versions", onclick: () => openVersions(chat(), m),
    }, "edited"));
  }
  appendFromDevice(meta, m);
  meta.append(h("time", { text: formatTime(m.at) }));
  if (m.outgoing) {
    const s = STATUS[m.status] || STATUS[DeliveryStatus.SENT];
    meta.append(icon(s.icon, "status-icon"), h("span", { class: "visually-hidden", text: s.label }));
    meta.title = s.label;
  }
  let sender = null;
  if (!m.outgoing && !li.classList.contains("cont")) {
    sender = h("span", { class: "msg-sender" }, m.sender);
    // Through the CSSOM: the page's CSP allows no inline style attributes.
    sender.style.setProperty("--sender", senderColor(m.sender));
  }
  // A file message shows its file (the body is its name); the page's file commands name the
  // group as the chat.
  let content;
  if (m.deleted) content = h("span", { class: "text tombstone", text: "This message was deleted" });
  else if (m.file) content = fileBlock({ groupId: m.groupId }, m);
  else content = h("bdi", { class: "text", dir: "auto" }, messageText(m.body, confirmLink));
  const bubble = h("div", { class: `bubble${m.file && !m.deleted ? " has-file" : ""}` }, quoteButton(m, jumpTo), content, meta);
  const parts = [sender, bubble, reactionRow(chat(), m, upsertGroupLine)];
  parts.push(actionBar(chat(), m, {
    reply: (x) => ctx.startReply(x), edit: (x) => ctx.startEdit(x), upsert: upsertGroupLine,
  }));
  li.replaceChildren(...parts.filter(Boolean));
  let what = m.file ? `${m.file.image ? "picture" : "file"} ${m.body}` : m.body;
  if (m.deleted) what = "This message was deleted";
  else if (m.edited) what = `${what} (edited)`;
  li.setAttribute("aria-label", `${m.outgoing ? "You" : m.sender}: ${what}`);
  if (li.contains(document.activeElement) || document.activeElement === li) setActionsTabbable(li, true);
}

/** Goes to the line a reply answers: shown already, or loaded (older pages) up to it. */
function jumpTo(r) {
  const li = $("group-message-list").querySelector(
    `li.msg[data-wire="${CSS.escape(r.messageId)}"][data-sender="${CSS.escape(r.sender)}"]`);
  if (li) {
    mark(li);
  } else if (r.seq !== null && r.seq !== undefined) {
    showLine(r.seq, generation);
  } else {
    showNotice({ kind: ErrorKind.INVALID_INPUT, message: "That message is no longer on this device." });
  }
}

/** Scrolls to line `li`, marks it for a moment and selects it. */
function mark(li) {
  for (const old of $("group-message-list").querySelectorAll("li.msg.found")) old.classList.remove("found");
  li.scrollIntoView({ block: "center" });
  li.classList.add("found");
  li.focus({ preventScroll: true });
  setTimeout(() => li.classList.remove("found"), FOUND_HIGHLIGHT_MS);
}

/** Colours for senders' names (`--sender-0` … in app.css, readable in both modes). */
const SENDER_COLORS = 8;

/** A sender's name colour, stable per name. */
function senderColor(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `var(--sender-${hash % SENDER_COLORS})`;
}

/** Day separators and the "continued" look of consecutive lines from one sender. */
function withDays(lines, prevDay) {
  const out = [];
  let day = prevDay;
  let prev = null;
  for (const m of lines) {
    const d = dayKey(m.at);
    if (d !== day) {
      out.push(h("li", { class: "day", dataset: { day: String(d) } }, formatDay(m.at)));
      day = d;
      prev = null;
    }
    const li = lineElement(m);
    if (prev && !m.system && !prev.system && prev.sender === m.sender && prev.outgoing === m.outgoing) {
      li.classList.add("cont");
      const sender = li.querySelector(".msg-sender");
      if (sender) sender.remove();
    }
    elements.set(m.id, li);
    out.push(li);
    prev = m;
  }
  return out;
}

function lastDay() {
  const items = $("group-message-list").querySelectorAll("li[data-day]");
  const last = items[items.length - 1];
  return last ? Number(last.dataset.day) : null;
}

function atBottom() {
  const box = $("group-messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < STICK_PX;
}

function scrollToBottom() {
  const box = $("group-messages");
  box.scrollTop = box.scrollHeight;
}

function renderHeader(group) {
  paintGroupAvatar($("group-avatar"), group);
  $("group-name").textContent = group.name;
  $("group-left-banner").hidden = !group.left;
  $("group-input").disabled = group.left;
  $("group-attach").disabled = group.left;
  $("group-input").placeholder = group.left ? "You are no longer in this group" : `Message ${group.name}`;
  $("group-members-button").disabled = false;
  updateSend();
}

async function renderSub(gen) {
  const sub = $("group-sub");
  try {
    const details = await api.groupDetails(current);
    if (gen !== generation) return;
    const n = details.members.length;
    sub.textContent = n > 0 ? `${n} members: ${details.members.map((m) => (m.me ? "you" : m.id)).join(", ")}` : "Not a member";
  } catch (err) {
    if (gen === generation) sub.textContent = "";
  }
}

function updateSend() {
  const input = $("group-input");
  $("group-send").disabled = input.disabled || input.value.trim().length === 0;
}

/** Opens group `id`'s conversation; with `at` (a line's `seq`, from a search) scrolled to that
 * line and marked. */
export async function openGroup(id, at = null) {
  const group = groupById(id);
  if (!group) return;
  generation += 1;
  const gen = generation;
  stopTyping();
  current = id;
  clearTypers();
  elements.clear();
  shown.clear();
  ctx.set(null);
  oldestSeq = null;
  hasMore = false;
  $("pane-empty").hidden = true;
  $("conversation").hidden = true;
  $("group-conversation").hidden = false;
  $("group-message-list").replaceChildren();
  renderHeader(group);
  renderSub(gen);
  loading = true;
  try {
    const page = await api.loadGroupMessages(id, null, PAGE);
    if (gen !== generation) return;
    $("group-message-list").replaceChildren(...withDays(page.messages, null));
    oldestSeq = page.messages.length ? page.messages[0].seq : null;
    hasMore = page.hasMore;
    scrollToBottom();
    if (group.unread > 0) api.markGroupRead(id).catch(showNotice);
  } catch (err) {
    showNotice(err);
  } finally {
    if (gen === generation) loading = false;
  }
  if (at !== null && gen === generation) await showLine(at, gen);
}

/** Loads older pages until line `seq` is shown (bounded), then scrolls to it and marks it. */
async function showLine(seq, gen) {
  const find = () => $("group-message-list").querySelector(`li.msg[data-seq="${Number(seq)}"]`);
  for (let n = 0; !find() && hasMore && n < MAX_FIND_PAGES && gen === generation; n += 1) {
    await loadOlder();
  }
  const li = find();
  if (!li || gen !== generation) return;
  mark(li);
}

/** Hides the group conversation (a 1:1 chat opens instead). */
export function closeGroup() {
  if (current === null) return;
  generation += 1;
  stopTyping();
  current = null;
  clearTypers();
  elements.clear();
  shown.clear();
  ctx.set(null);
  $("group-conversation").hidden = true;
}

async function loadOlder() {
  if (loading || !hasMore || current === null || oldestSeq === null) return;
  loading = true;
  const gen = generation;
  const box = $("group-messages");
  $("group-history-top").classList.add("loading");
  try {
    const page = await api.loadGroupMessages(current, oldestSeq, PAGE);
    if (gen !== generation) return;
    const before = box.scrollHeight;
    const list = $("group-message-list");
    // Rebuilt with the older page in front, so day separators stay right.
    const firstDay = page.messages.length ? dayKey(page.messages[page.messages.length - 1].at) : null;
    const head = list.firstElementChild;
    if (head && head.classList.contains("day") && Number(head.dataset.day) === firstDay) head.remove();
    list.prepend(...withDays(page.messages, null));
    oldestSeq = page.messages.length ? page.messages[0].seq : oldestSeq;
    hasMore = page.hasMore;
    box.scrollTop += box.scrollHeight - before;
  } catch (err) {
    showNotice(err);
  } finally {
    $("group-history-top").classList.remove("loading");
    if (gen === generation) loading = false;
  }
}

/** A new or changed line (an event, or our own send's answer). */
export function upsertGroupLine(m) {
  if (!m.outgoing && !m.system) announceLine(m);
  if (m.groupId !== current) return;
  const existing = elements.get(m.id);
  if (existing) {
    // The send's answer (pending) can arrive after the event that it was sent: keep the later
    // state in the contract's order (the backend only moves a message forwards).
    const later = DELIVERY_STATUS_ORDER.indexOf(m.status) > DELIVERY_STATUS_ORDER.indexOf(existing.dataset.status);
    // An edit, a delete or a reaction raises the revision; the server taking our message gives
    // it its wire id (never taken away: the send's answer can arrive after that event).
    const changed = (m.rev || 0) > Number(existing.dataset.rev || 0)
      || (!!m.wireId && !existing.dataset.wire);
    if (m.system) return;
    if (later || changed) {
      fillLine(existing, m);
    } else if (m.file && m.status === existing.dataset.status && !updateProgress(existing, m)) {
      // A file's transfer moved on: the bar moves in place; a new state redraws the line.
      fillLine(existing, m);
    }
    return;
  }
  const stick = atBottom() || m.outgoing;
  const list = $("group-message-list");
  const last = list.lastElementChild;
  const items = withDays([m], lastDay());
  const li = items[items.length - 1];
  if (last && last.classList.contains("msg") && li.classList.contains("msg")
    && last.dataset.sender === m.sender && last.classList.contains("out") === m.outgoing && items.length === 1) {
    li.classList.add("cont");
    const sender = li.querySelector(".msg-sender");
    if (sender) sender.remove();
  }
  list.append(...items);
  if (stick) scrollToBottom();
  if (!m.outgoing && !m.system && document.hasFocus()) api.markGroupRead(current).catch(showNotice);
}

/** Lines announced already (a file's line comes again with each step of its download). */
const announced = new Set();

function announceLine(m) {
  if (announced.has(m.id)) return;
  if (announced.size > 1000) announced.clear();
  announced.add(m.id);
  const group = groupById(m.groupId);
  const where = group ? ` in ${group.name}` : "";
  if (m.file) {
    announce(`${m.sender} sent a ${m.file.image ? "picture" : "file"}${where}: ${m.body}`);
    return;
  }
  const text = m.body.length > ANNOUNCE_CHARS ? `${m.body.slice(0, ANNOUNCE_CHARS)}…` : m.body;
  announce(`New message from ${m.sender}${where}: ${text}`);
}

/** The group list changed: the open group's header follows (a rename, leaving). */
export function refreshGroup() {
  if (current === null) return;
  const group = groupById(current);
  if (group) renderHeader(group);
  renderSub(generation);
}

async function send() {
  const input = $("group-input");
  const text = input.value;
  if (current === null || text.trim().length === 0) return;
  stopTyping();
  input.value = "";
  autosize();
  updateSend();
  const mode = ctx.mode;
  ctx.set(null);
  try {
    const line = mode && mode.kind === "edit"
      ? await api.editMessage(chat(), mode.m.seq, text)
      : await api.sendGroupMessage(current, text, mode && mode.kind === "reply" ? mode.m.seq : null);
    upsertGroupLine(line);
  } catch (err) {
    // Nothing typed is lost: put it back.
    if (input.value.length === 0) input.value = text;
    if (ctx.mode === null) ctx.set(mode);
    autosize();
    updateSend();
    showNotice(err);
  }
}

/** The message shortcuts in the open group (false when no group is open: the 1:1 chat's apply). */
export const groupShortcuts = messageShortcutsFor({
  open: () => current !== null,
  items: () => Array.from($("group-message-list").querySelectorAll("li.msg")),
  message: (li) => shown.get(li.dataset.id),
  chat,
  get ctx() { return ctx; },
  upsert: (m) => upsertGroupLine(m),
});

function autosize() {
  const input = $("group-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 168)}px`;
}

/** Attach in the open group: the system's dialog, then the files go to the group. */
export async function attachToGroup() {
  if (current === null || $("group-attach").disabled) return true;
  try {
    const sent = await api.attachFile({ groupId: current });
    for (const m of sent || []) upsertGroupLine(m);
  } catch (err) {
    showNotice(err);
  }
  return true;
}

/** Files dropped on the window while a group is open go to it; false when none is open. */
export function dropOnGroup() {
  $("group-drop-overlay").hidden = true;
  if (current === null) return false;
  const group = current;
  api.sendDropped({ groupId: group })
    .then((sent) => { for (const m of sent || []) upsertGroupLine(m); })
    .catch(showNotice);
  return true;
}

/** Focuses the group composer (a keyboard shortcut). */
export function focusGroupComposer() {
  const input = $("group-input");
  if (current !== null && !input.disabled) input.focus();
}

// ---------- typing ----------

/** The user typed in the group composer: "started" at the 1:1 pace (the library paces it too). */
function noteTyping() {
  if (current === null) return;
  clearTimeout(typingIdle);
  if ($("group-input").value.trim().length === 0) {
    stopTyping();
    return;
  }
  if (Date.now() - typingSentAt > TYPING_RESEND_MS) {
    typingSentAt = Date.now();
    api.groupTyping(current, true).catch(() => {});
  }
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdle);
  typingIdle = null;
  if (typingSentAt !== 0 && current !== null) api.groupTyping(current, false).catch(() => {});
  typingSentAt = 0;
}

/** "bob is typing…", "bob and carol are typing…", "4 people are typing…". */
function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

function renderTypers() {
  $("group-typing-indicator").textContent = typingText([...typers].sort());
}

function clearTypers() {
  typers.clear();
  renderTypers();
}

/** A member of a group started or stopped typing; only the open group's are shown. */
function onGroupTyping(t) {
  if (t.groupId !== current) return;
  if (t.typing) typers.add(t.memberId);
  else typers.delete(t.memberId);
  renderTypers();
}

/** Marks the open group read (a keyboard shortcut). */
export function markGroupRead() {
  if (current !== null) api.markGroupRead(current).catch(showNotice);
}

// ---------- picking people ----------

/** Checkboxes for the known people who are not in `exclude`; original clients are shown but
 * cannot be picked, with the reason beside them. */
function pickList(listId, exclude, emptyText) {
  const me = state.me ? state.me.clientId : null;
  const people = state.peers.filter((p) => p.id !== me && !exclude.has(p.id));
  const list = $(listId);
  if (people.length === 0) {
    list.replaceChildren(h("li", { class: "muted small pick-empty" }, emptyText));
    return 0;
  }
  list.replaceChildren(...people.map((p) => {
    const avatar = h("span", { class: "avatar small" });
    paintAvatar(avatar, p.id, p.online);
    const reason = p.original ? "original client: cannot join groups" : null;
    return h("li", {},
      h("label", { class: `pick${reason ? " disabled" : ""}` },
        h("input", { type: "checkbox", value: p.id, disabled: !!reason, "aria-describedby": reason ? `${listId}-why-${p.id}` : null }),
        avatar,
        h("span", { class: "pick-name" }, p.id),
        reason ? h("span", { class: "tag warn", id: `${listId}-why-${p.id}` }, reason) : null));
  }));
  return people.filter((p) => !p.original).length;
}

function picked(listId) {
  return Array.from($(listId).querySelectorAll("input[type=checkbox]:checked")).map((i) => i.value);
}

function showError(id, err) {
  const el = $(id);
  el.textContent = err ? err.message : "";
  el.hidden = !err;
}

// ---------- New group ----------

/** Opens the New group dialog. */
export function openNewGroup() {
  const dialog = $("new-group-dialog");
  if (dialog.open) return true;
  $("new-group-name").value = "";
  $("new-group-status").textContent = "";
  showError("new-group-error", null);
  pickList("new-group-people", new Set(),
    "Nobody else is known yet: people show up once they connect to your server.");
  $("new-group-submit").disabled = false;
  dialog.showModal();
  $("new-group-name").focus();
  return true;
}

async function createGroup(e) {
  e.preventDefault();
  const name = $("new-group-name").value.trim();
  const members = picked("new-group-people");
  if (!name) {
    showError("new-group-error", { message: "Give the group a name." });
    $("new-group-name").focus();
    return;
  }
  if (members.length === 0) {
    showError("new-group-error", { message: "Pick at least one person." });
    return;
  }
  showError("new-group-error", null);
  $("new-group-submit").disabled = true;
  $("new-group-status").textContent = "Creating the group: fetching each person's group keys…";
  try {
    const group = await api.createGroup(name, members);
    $("new-group-dialog").close();
    onSelect(groupKey(group.id));
  } catch (err) {
    $("new-group-status").textContent = "";
    showError("new-group-error", err);
  } finally {
    $("new-group-submit").disabled = false;
  }
}

// ---------- the member panel ----------

let panelGroup = null;

function renderPanel(details) {
  panelGroup = details.group.id;
  $("group-dialog-title").textContent = `${details.group.name}: members`;
  $("group-rename-input").value = details.group.name;
  const left = details.group.left;
  // Not left, yet no members: the app is offline (the list comes from the group's MLS state
  // through the running session).
  const out = left || details.members.length === 0;
  $("group-rename-form").hidden = out;
  $("group-invite-field").hidden = out;
  $("group-leave").hidden = out;
  $("group-members-intro").textContent = left
    ? "You are no longer in this group: there is no member list."
    : out
      ? "Connect to the server to see the members and change the group."
      : "Compare a member's safety number with what their app shows for themselves.";
  $("group-member-list").replaceChildren(...details.members.map((m) => {
    const avatar = h("span", { class: "avatar small" });
    paintAvatar(avatar, m.id, false);
    return h("li", { class: "member" },
      avatar,
      h("div", { class: "member-text" },
        h("span", { class: "member-name" }, m.me ? `${m.id} (you)` : m.id),
        h("span", { class: "member-fingerprint", "aria-label": `Safety number of ${m.id}: ${m.fingerprint}` }, m.fingerprint)),
      m.me ? null : h("button", {
        class: "button small ghost", type: "button", "aria-label": `Remove ${m.id} from the group`,
        onclick: () => removeMember(m.id),
      }, "Remove"));
  }));
  const invitable = pickList("group-invite-people", new Set(details.members.map((m) => m.id)),
    "Everyone you know is in this group already.");
  $("group-invite-submit").hidden = invitable === 0;
}

/** Opens the open group's member panel. */
export async function openMembers() {
  if (current === null) return false;
  resetLeave();
  showError("group-dialog-error", null);
  $("group-dialog-status").textContent = "";
  try {
    renderPanel(await api.groupDetails(current));
  } catch (err) {
    showNotice(err);
    return true;
  }
  const dialog = $("group-dialog");
  if (!dialog.open) dialog.showModal();
  return true;
}

async function change(what, call) {
  showError("group-dialog-error", null);
  $("group-dialog-status").textContent = what;
  try {
    const details = await call();
    $("group-dialog-status").textContent = "";
    if (details) renderPanel(details);
    refreshGroup();
    return true;
  } catch (err) {
    $("group-dialog-status").textContent = "";
    showError("group-dialog-error", err);
    return false;
  }
}

function removeMember(id) {
  if (!panelGroup) return;
  change(`Removing ${id}…`, () => api.removeFromGroup(panelGroup, id));
}

/** Leaving takes two clicks: the first asks, in the panel itself. */
let leaveAsked = false;

function resetLeave() {
  leaveAsked = false;
  $("group-leave").textContent = "Leave group";
}

async function leave() {
  if (!panelGroup) return;
  const group = groupById(panelGroup);
  const name = group ? group.name : "this group";
  if (!leaveAsked) {
    leaveAsked = true;
    $("group-leave").textContent = "Yes, leave";
    $("group-dialog-status").textContent = `Leave ${name}? You will not read what is written there afterwards. Click again to leave.`;
    return;
  }
  resetLeave();
  if (await change("Leaving…", () => api.leaveGroup(panelGroup).then(() => null))) {
    $("group-dialog").close();
    showNotice({ kind: "info", message: `You asked to leave ${name}; another member confirms it.` });
  }
}

/** Wires the dialogs and the group composer; `select(key)` opens a conversation. */
export function initGroups(select) {
  onSelect = select;
  $("open-new-group").addEventListener("click", openNewGroup);
  $("new-group-form").addEventListener("submit", createGroup);
  for (const id of ["new-group-close", "new-group-cancel"]) {
    $(id).addEventListener("click", () => $("new-group-dialog").close());
  }
  $("group-members-button").addEventListener("click", openMembers);
  $("group-export").addEventListener("click", () => {
    const group = current === null ? null : groupById(current);
    if (group) openGroupExport(group.id, group.name);
  });
  for (const id of ["group-dialog-close", "group-dialog-done"]) {
    $(id).addEventListener("click", () => $("group-dialog").close());
  }
  $("group-rename-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!panelGroup) return;
    change("Renaming…", () => api.renameGroup(panelGroup, $("group-rename-input").value));
  });
  $("group-invite-submit").addEventListener("click", () => {
    const members = picked("group-invite-people");
    if (!panelGroup) return;
    if (members.length === 0) {
      showError("group-dialog-error", { message: "Pick someone to invite." });
      return;
    }
    change(`Inviting ${members.join(", ")}…`, () => api.inviteToGroup(panelGroup, members));
  });
  $("group-leave").addEventListener("click", leave);

  const input = $("group-input");
  ctx = composerContext({ prefix: "group-composer", form: "group-composer", input: "group-input" },
    () => { autosize(); updateSend(); }, (m) => m.sender);
  composerKeys(input, ctx, send, () => ctx.startEdit(groupShortcuts.last(changeable)));
  // Selecting lines: ↑ ↓ move between messages; the selected one's buttons join the tab order.
  selectableMessages($("group-message-list"), loadOlder);
  input.addEventListener("input", () => {
    autosize();
    updateSend();
    noteTyping();
  });
  input.addEventListener("blur", stopTyping);
  on(Event.GROUP_TYPING, onGroupTyping);
  // A picture (or any file) pasted into the group composer goes to the group.
  input.addEventListener("paste", (e) => {
    const files = Array.from((e.clipboardData && e.clipboardData.files) || []);
    if (files.length > 0 && current !== null) {
      e.preventDefault();
      sendBlobs({ groupId: current }, files, upsertGroupLine);
    }
  });
  $("group-composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("group-attach").addEventListener("click", attachToGroup);

  // Files dragged over the open group: from the desktop (the window reports the hover; the drop
  // comes as files-dropped, see dropOnGroup) or from the page itself (sent as bytes).
  const overlay = $("group-drop-overlay");
  const open = () => current !== null && !$("group-attach").disabled;
  on(Event.DROP_HOVER, (hovering) => {
    overlay.hidden = !(hovering && open());
  });
  const box = $("group-conversation");
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  box.addEventListener("dragover", (e) => {
    if (!hasFiles(e) || !open()) return;
    e.preventDefault();
    overlay.hidden = false;
  });
  box.addEventListener("dragleave", (e) => {
    if (e.target === overlay || !box.contains(e.relatedTarget)) overlay.hidden = true;
  });
  box.addEventListener("drop", (e) => {
    overlay.hidden = true;
    if (!hasFiles(e) || !open()) return;
    e.preventDefault();
    sendBlobs({ groupId: current }, Array.from(e.dataTransfer.files), upsertGroupLine);
  });
  $("group-messages").addEventListener("scroll", () => {
    if ($("group-messages").scrollTop < LOAD_MARGIN_PX) loadOlder();
  });
}
