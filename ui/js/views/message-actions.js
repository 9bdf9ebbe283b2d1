// What a person can do with one message, besides reading it: the action buttons drawn on each
// message (reply, react, edit, delete), its reactions, and the dialog that asks how to delete it,
// which emoji to react with, or shows its earlier versions. The conversation owns the messages
// and the composer; it hands this module the message and a callback for the composer's part
// (reply, edit).

import { api } from "../api.js";
import { EDIT_WINDOW_MS } from "../contract.js";
import { state, peerById } from "../state.js";
import { h, icon, formatTime } from "../util.js";
import { showNotice } from "./toasts.js";

/** The reactions offered first; the picker also takes any one emoji typed in. */
export const REACTIONS = Object.freeze(["👍", "❤️", "😂", "😮", "😢", "🙏"]);


const $ = (id) => document.getElementById(id);

function me() {
  return state.me ? state.me.clientId : null;
}

/** Whether `m` is ours and may still be edited or deleted for everyone. */
export function changeable(m) {
  return m.outgoing && !m.deleted && !!m.wireId && Date.now() - m.at < EDIT_WINDOW_MS;
}

/** Whether `m` can be replied or reacted to. */
export function referable(m) {
  return !m.deleted && !!m.wireId;
}

/** Whether the conversation's peer is an original client, which gets plain text only (a reply
 * arrives as quoted text, an edit as a new text; reactions and deletes cannot reach it). */
function plainTextOnly(peerId) {
  const peer = peerById(peerId);
  return !!(peer && peer.original);
}

function openDialog(title, ...content) {
  $("message-dialog-title").textContent = title;
  $("message-dialog-content").replaceChildren(...content);
  const dialog = $("message-dialog");
  if (!dialog.open) dialog.showModal();
  const first = $("message-dialog-content").querySelector("button, input");
  if (first) first.focus();
}

function closeDialog() {
  $("message-dialog").close();
}

async function run(action) {
  try {
    return await action();
  } catch (err) {
    showNotice(err);
    return null;
  }
}

/** Asks how to delete `m`: for me, or (ours, recent) for everyone. */
export function openDelete(peerId, m) {
  const buttons = [];
  if (changeable(m) && !plainTextOnly(peerId)) {
    buttons.push(h("button", {
      class: "button danger", type: "button", id: "delete-for-everyone",
      onclick: async () => {
        closeDialog();
        await run(() => api.deleteMessage(peerId, m.seq, true));
      },
    }, "Delete for everyone"));
  }
  buttons.push(h("button", {
    class: "button", type: "button", id: "delete-for-me",
    onclick: async () => {
      closeDialog();
      await run(() => api.deleteMessage(peerId, m.seq, false));
    },
  }, "Delete for me"));
  buttons.push(h("button", { class: "button ghost", type: "button", onclick: closeDialog }, "Cancel"));
  const note = changeable(m) && !plainTextOnly(peerId)
    ? "Deleting for everyone leaves “This message was deleted” on both sides."
    : "This removes the message from this device only.";
  openDialog("Delete this message?", h("p", { class: "muted", text: note }),
    h("div", { class: "dialog-actions" }, ...buttons));
  // Nothing is deleted by a stray Enter: the safe choice has the focus.
  buttons[buttons.length - 1].focus();
}

/** The emoji picker for `m`: the usual set, or any one emoji typed in. */
export function openReact(peerId, m, upsert) {
  const react = async (emoji) => {
    closeDialog();
    const updated = await run(() => api.react(peerId, m.seq, emoji));
    if (updated) upsert(updated);
  };
  const mine = (m.reactions || []).find((r) => r.reactors.includes(me()));
  const set = h("div", { class: "reaction-picker", role: "group", "aria-label": "Reactions" },
    ...REACTIONS.map((emoji) => h("button", {
      class: "reaction-choice", type: "button",
      "aria-label": `React with ${emoji}`, "aria-pressed": mine && mine.emoji === emoji ? "true" : "false",
      onclick: () => react(emoji),
    }, emoji)));
  const input = h("input", {
    id: "reaction-other", maxlength: "32", autocomplete: "off", spellcheck: "false",
    "aria-label": "Another emoji",
  });
  const other = h("form", {
    class: "reaction-other",
    onsubmit: (e) => {
      e.preventDefault();
      const value = input.value.trim();
      if (value) react(value);
    },
  }, h("label", { class: "field-label", for: "reaction-other", text: "Another emoji" }), input,
  h("button", { class: "button", type: "submit" }, "React"));
  openDialog("React to this message", set, other);
}

/** Shows the earlier versions of an edited message, oldest first, then the current text. */
export async function openVersions(peerId, m) {
  const versions = await run(() => api.messageVersions(peerId, m.seq));
  if (!versions) return;
  const items = versions.map((v) => h("li", {},
    h("bdi", { dir: "auto", class: "version-text", text: v.body }),
    h("span", { class: "muted small", text: ` replaced ${formatTime(v.replacedAt)}` })));
  items.push(h("li", { class: "current" },
    h("bdi", { dir: "auto", class: "version-text", text: m.body }),
    h("span", { class: "muted small", text: " (now)" })));
  openDialog("Earlier versions", h("ol", { class: "versions" }, ...items));
}

/** The reactions under a message: one chip per emoji with its count; ours pressed. */
export function reactionRow(peerId, m, upsert) {
  if (!m.reactions || m.reactions.length === 0 || m.deleted) return null;
  return h("div", { class: "reactions", role: "group", "aria-label": "Reactions" },
    ...m.reactions.map((r) => {
      const who = r.reactors.map((id) => (id === me() ? "you" : id)).join(", ");
      return h("button", {
        class: "reaction", type: "button", tabindex: "-1",
        title: `${r.emoji} by ${who}`,
        "aria-label": `${r.emoji} ${r.reactors.length}, by ${who}`,
        "aria-pressed": r.reactors.includes(me()) ? "true" : "false",
        onclick: async () => {
          const updated = await run(() => api.react(peerId, m.seq, r.emoji));
          if (updated) upsert(updated);
        },
      }, h("span", { "aria-hidden": "true", text: r.emoji }), h("span", { class: "count", "aria-hidden": "true", text: String(r.reactors.length) }));
    }));
}

/**
 * The action buttons of a message. They are out of the tab order until the message is selected
 * (focused): the conversation moves focus between messages with the arrow keys.
 */
export function actionBar(peerId, m, { reply, edit, upsert }) {
  const button = (name, label, onclick) => h("button", {
    class: `msg-action ${name}`, type: "button", tabindex: "-1", "aria-label": label, title: label, onclick,
  }, icon(ACTION_ICONS[name]));
  const buttons = [];
  if (referable(m)) {
    buttons.push(button("reply", "Reply", () => reply(m)));
    if (!plainTextOnly(peerId)) buttons.push(button("react", "React", () => openReact(peerId, m, upsert)));
  }
  if (changeable(m)) buttons.push(button("edit", "Edit", () => edit(m)));
  buttons.push(button("delete", "Delete", () => openDelete(peerId, m)));
  return h("div", { class: "msg-actions", role: "toolbar", "aria-label": "Message actions" }, ...buttons);
}

const ACTION_ICONS = { reply: "reply", react: "smile", edit: "edit", delete: "trash" };

export function initMessageActions() {
  $("message-dialog-close").addEventListener("click", closeDialog);
}
