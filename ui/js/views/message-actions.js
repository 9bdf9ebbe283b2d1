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

/** Whether `chat` is a 1:1 chat, where a message can also be deleted on this device only. */
function isDirect(chat) {
  return typeof chat === "string";
}

/** Whether the action bar offers to delete `m` in `chat` (a group has no "delete for me"). */
export function deletable(chat, m) {
  return isDirect(chat) || changeable(m);
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

/** Asks how to delete `m`: for me (a 1:1 chat), or (ours, recent) for everyone. False when
 * neither applies (someone else's message in a group). */
export function openDelete(chat, m) {
  const everyone = changeable(m) && !plainTextOnly(chat);
  const forMe = isDirect(chat);
  if (!everyone && !forMe) return false;
  const buttons = [];
  const choice = (id, cls, label, forEveryone) => h("button", {
    class: cls, type: "button", id,
    onclick: async () => {
      closeDialog();
      await run(() => api.deleteMessage(chat, m.seq, forEveryone));
    },
  }, label);
  if (everyone) buttons.push(choice("delete-for-everyone", "button danger", "Delete for everyone", true));
  if (forMe) buttons.push(choice("delete-for-me", "button", "Delete for me", false));
  buttons.push(h("button", { class: "button ghost", type: "button", onclick: closeDialog }, "Cancel"));
  let note = "This removes the message from this device only.";
  if (everyone) {
    note = forMe
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
    const updated = await run(() => api.react(chat, m.seq, emoji));
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
  const versions = await run(() => api.messageVersions(chat, m.seq));
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
          const updated = await run(() => api.react(chat, m.seq, r.emoji));
          if (updated) upsert(updated);
        },
      }, h("span", { "aria-hidden": "true", text: r.emoji }), h("span", { class: "count", "aria-hidden": "true", text: String(r.reactors.length) }));
    }));
}

/**
 * The action buttons of a message. They are out of the tab order until the message is selected
 * (focused): the conversation moves focus between messages with the arrow keys. `null` when
 * none applies (a tombstone in a group; never in a 1:1 chat, where "delete for me" always does).
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
  if (deletable(chat, m)) buttons.push(button("delete", "Delete", () => openDelete(chat, m)));
  if (buttons.length === 0) return null;
  return h("div", { class: "msg-actions", role: "toolbar", "aria-label": "Message actions" }, ...buttons);
}

const ACTION_ICONS = { reply: "reply", react: "smile", edit: "edit", delete: "trash" };

/** The quote above reply `m`: who and what it answers; activating it calls `jump(m.replyTo)`. */
export function quoteButton(m, jump) {
  if (!m.replyTo || m.deleted) return null;
  const r = m.replyTo;
  const who = r.sender === me() ? "You" : r.sender;
  // The name is the visible text, with what it is said first for screen readers.
  return h("button", {
    class: "quote", type: "button", tabindex: "-1", title: "Go to the quoted message",
    onclick: () => jump(r),
  }, h("span", { class: "visually-hidden", text: "Quoted from " }),
  h("span", { class: "quote-sender", text: who }),
  h("span", { class: "visually-hidden", text: ": " }),
  h("bdi", { class: "quote-text", dir: "auto", text: r.excerpt }));
}

/** The action buttons (and quote, reactions) of a message join the tab order while it is selected. */
export function setActionsTabbable(li, on) {
  for (const b of li.querySelectorAll("button")) b.tabIndex = on ? 0 : -1;
}

/** Makes the messages (`li.msg`) of `list` selectable: ↑ ↓ move between them (`atTop()` runs
 * when ↑ finds none above), and the selected one's buttons join the tab order. */
export function selectableMessages(list, atTop) {
  list.addEventListener("keydown", (e) => {
    const li = e.target.closest && e.target.closest("li.msg");
    if (!li || e.target !== li || e.altKey || e.ctrlKey) return;
    const step = { ArrowUp: "previousElementSibling", ArrowDown: "nextElementSibling" }[e.key];
    if (!step) return;
    let next = li[step];
    while (next && !next.classList.contains("msg")) next = next[step];
    if (!next && e.key === "ArrowUp") atTop();
    e.preventDefault();
    if (next) next.focus();
  });
  list.addEventListener("focusin", (e) => {
    const li = e.target.closest && e.target.closest("li.msg");
    if (li) setActionsTabbable(li, true);
  });
  list.addEventListener("focusout", (e) => {
    const li = e.target.closest && e.target.closest("li.msg");
    if (li && !li.contains(e.relatedTarget)) setActionsTabbable(li, false);
  });
}

/**
 * The reply / edit state of a composer and the bar above it that says so, made here and put
 * before the form `ids.form` (its parts' ids start with `ids.prefix`: `<prefix>-context`,
 * `-context-title`, `-context-excerpt`, `-context-cancel`). `refresh()` resizes the input
 * (`ids.input`) and updates the send button after its text changed; `who(m)` names the author
 * of a message replied to.
 */
export function composerContext(ids, refresh, who) {
  const id = (part) => `${ids.prefix}-context${part}`;
  const title = h("span", { class: "composer-context-title", id: id("-title") });
  const excerpt = h("bdi", { class: "composer-context-excerpt", id: id("-excerpt"), dir: "auto" });
  const cancel = h("button", { class: "icon-button", type: "button", id: id("-cancel"), "aria-label": "Cancel" }, icon("close"));
  const bar = h("div", { class: "composer-context", id: id(""), hidden: "" },
    h("div", { class: "composer-context-text" }, title, excerpt), cancel);
  $(ids.form).before(bar);
  let mode = null; // { kind: "reply" | "edit", m }
  const input = () => $(ids.input);
  const ctx = {
    get mode() { return mode; },
    set(next) {
      mode = next;
      bar.hidden = next === null;
      if (next === null) return;
      const m = next.m;
      title.textContent = next.kind === "edit" ? "Editing your message" : `Replying to ${m.outgoing ? "yourself" : who(m)}`;
      excerpt.textContent = m.body;
    },
    startReply(m) {
      if (!m || !referable(m) || input().disabled) return false;
      ctx.set({ kind: "reply", m });
      input().focus();
      return true;
    },
    startEdit(m) {
      if (!m || !changeable(m) || input().disabled) return false;
      ctx.set({ kind: "edit", m });
      const el = input();
      el.value = m.body;
      refresh();
      el.focus();
      el.setSelectionRange(el.value.length, el.value.length);
      return true;
    },
    cancel() {
      const wasEdit = mode && mode.kind === "edit";
      ctx.set(null);
      if (wasEdit) {
        input().value = "";
        refresh();
      }
    },
  };
  cancel.addEventListener("click", () => {
    ctx.cancel();
    input().focus();
  });
  return ctx;
}

/** Enter sends, ↑ in an empty composer edits your last message (`editLast()`), Escape leaves a
 * reply or an edit. */
export function composerKeys(input, ctx, send, editLast) {
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === "ArrowUp" && input.value.length === 0 && !e.altKey && !e.ctrlKey && !e.shiftKey) {
      if (editLast()) e.preventDefault();
    } else if (e.key === "Escape" && ctx.mode !== null) {
      e.preventDefault();
      ctx.cancel();
    }
  });
}

/**
 * The keyboard shortcuts on messages of a conversation view: `view.open()` says whether it is
 * shown, `view.items()` lists its message `<li>`s (oldest first), `view.message(li)` is the
 * message drawn there, `view.chat()` names it for the commands, `view.ctx` is its
 * [composerContext] and `view.upsert` redraws a message.
 */
export function messageShortcutsFor(view) {
  const selected = () => {
    const li = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("li.msg") : null;
    return li && view.items().includes(li) ? view.message(li) : null;
  };
  const last = (pick) => {
    const items = view.items();
    for (let i = items.length - 1; i >= 0; i--) {
      const m = view.message(items[i]);
      if (m && pick(m)) return m;
    }
    return null;
  };
  const received = (m) => !m.outgoing && referable(m);
  return {
    last,
    focusMessages() {
      const items = view.items();
      if (!view.open() || items.length === 0) return false;
      items[items.length - 1].focus();
      return true;
    },
    reply: () => view.open() && view.ctx.startReply(selected() || last(received)),
    edit: () => view.open() && view.ctx.startEdit(selected() || last(changeable)),
    react() {
      const m = selected() || last(received);
      if (!view.open() || !m || !referable(m)) return false;
      openReact(view.chat(), m, view.upsert);
      return true;
    },
    deleteMessage() {
      const m = selected() || last(changeable);
      if (!view.open() || !m) return false;
      return openDelete(view.chat(), m);
    },
  };
}

export function initMessageActions() {
  $("message-dialog-close").addEventListener("click", closeDialog);
}
