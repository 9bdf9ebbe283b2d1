// What a person can do with one message, besides reading it: the action buttons drawn on each
// message (reply, react, edit, delete), its reactions, and the dialog that asks how to delete it,
// which emoji to react with, or shows its earlier versions. The conversation owns the messages
// and the composer; it hands this module the message and a callback for the composer's part
// (reply, edit).
//
// A conversation is named as the file commands name it: a peer id (a 1:1 chat) or `{ groupId }`
// (a group). In a group there is no "delete for me" and no original client: the rest is the same.

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
 * arrives as quoted text, an edit as a new text; reactions and deletes cannot reach it). A group
 * has none. */
function plainTextOnly(chat) {
  if (typeof chat !== "string") return false;
  const peer = peerById(chat);
  return !!(peer && peer.original);
}

/** The commands on `chat`'s messages. */
function commands(chat) {
  if (typeof chat === "string") {
    return {
      forMe: true,
      deleteForEveryone: (m) => api.deleteMessage(chat, m.seq, true),
      deleteForMe: (m) => api.deleteMessage(chat, m.seq, false),
      react: (m, emoji) => api.react(chat, m.seq, emoji),
      versions: (m) => api.messageVersions(chat, m.seq),
    };
  }
  return {
    forMe: false,
    deleteForEveryone: (m) => api.deleteGroupMessage(chat.groupId, m.seq),
    react: (m, emoji) => api.reactInGroup(chat.groupId, m.seq, emoji),
    versions: (m) => api.groupMessageVersions(chat.groupId, m.seq),
  };
}

/** Whether the action bar offers to delete `m` in `chat` (a group has no "delete for me"). */
export function deletable(chat, m) {
  return commands(chat).forMe || changeable(m);
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

/** Asks how to delete `m`: for me (a 1:1 chat), or (ours, recent) for everyone. `upsert`
 * redraws what the command answers (a group's tombstone). */
export function openDelete(chat, m, upsert = () => {}) {
  const cmd = commands(chat);
  const everyone = changeable(m) && !plainTextOnly(chat);
  if (!everyone && !cmd.forMe) return false;
  const buttons = [];
  if (everyone) {
    buttons.push(h("button", {
      class: "button danger", type: "button", id: "delete-for-everyone",
      onclick: async () => {
        closeDialog();
        const updated = await run(() => cmd.deleteForEveryone(m));
        if (updated) upsert(updated);
      },
    }, "Delete for everyone"));
  }
  if (cmd.forMe) {
    buttons.push(h("button", {
      class: "button", type: "button", id: "delete-for-me",
      onclick: async () => {
        closeDialog();
        await run(() => cmd.deleteForMe(m));
      },
    }, "Delete for me"));
  }
  buttons.push(h("button", { class: "button ghost", type: "button", onclick: closeDialog }, "Cancel"));
  let note = "This removes the message from this device only.";
  if (everyone) {
    note = cmd.forMe
      ? "Deleting for everyone leaves “This message was deleted” on both sides."
      : "Deleting for everyone leaves “This message was deleted” for every member.";
  }
  openDialog("Delete this message?", h("p", { class: "muted", text: note }),
    h("div", { class: "dialog-actions" }, ...buttons));
  // Nothing is deleted by a stray Enter: the safe choice has the focus.
  buttons[buttons.length - 1].focus();
  return true;
}

/** The emoji picker for `m`: the usual set, or any one emoji typed in. */
export function openReact(chat, m, upsert) {
  const react = async (emoji) => {
    closeDialog();
    const updated = await run(() => commands(chat).react(m, emoji));
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
export async function openVersions(chat, m) {
  const versions = await run(() => commands(chat).versions(m));
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
export function reactionRow(chat, m, upsert) {
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
          const updated = await run(() => commands(chat).react(m, r.emoji));
          if (updated) upsert(updated);
        },
      }, h("span", { "aria-hidden": "true", text: r.emoji }), h("span", { class: "count", "aria-hidden": "true", text: String(r.reactors.length) }));
    }));
}

/**
 * The action buttons of a message. They are out of the tab order until the message is selected
 * (focused): the conversation moves focus between messages with the arrow keys.
 */
export function actionBar(chat, m, { reply, edit, upsert }) {
  const button = (name, label, onclick) => h("button", {
    class: `msg-action ${name}`, type: "button", tabindex: "-1", "aria-label": label, title: label, onclick,
  }, icon(ACTION_ICONS[name]));
  const buttons = [];
  if (referable(m)) {
    buttons.push(button("reply", "Reply", () => reply(m)));
    if (!plainTextOnly(chat)) buttons.push(button("react", "React", () => openReact(chat, m, upsert)));
  }
  if (changeable(m)) buttons.push(button("edit", "Edit", () => edit(m)));
  if (deletable(chat, m)) buttons.push(button("delete", "Delete", () => openDelete(chat, m, upsert)));
  return h("div", { class: "msg-actions", role: "toolbar", "aria-label": "Message actions" }, ...buttons);
}

const ACTION_ICONS = { reply: "reply", react: "smile", edit: "edit", delete: "trash" };

export function initMessageActions() {
  $("message-dialog-close").addEventListener("click", closeDialog);
}
