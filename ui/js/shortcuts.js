// Keyboard shortcuts, defined once: this table drives both the key handler and the help dialog
// (Ctrl+/), so what the help lists is exactly what the keys do. `keys` is parsed into the
// match; `run` receives the actions main.js provides. Entries marked `native` are done by the
// control itself (Enter in the composer, Escape on a dialog) and are listed for completeness.

/** The shortcuts, in the order the help lists them. */
export const SHORTCUTS = Object.freeze([
  { id: "searchConversation", keys: "Ctrl+F", label: "Search in this conversation" },
  { id: "searchAll", keys: "Ctrl+K", label: "Search all conversations" },
  { id: "previousConversation", keys: "Alt+ArrowUp", label: "Previous conversation" },
  { id: "nextConversation", keys: "Alt+ArrowDown", label: "Next conversation" },
  { id: "focusComposer", keys: "Ctrl+Shift+M", label: "Write a message (focus the composer)" },
  // Not Ctrl+Shift+U: on Linux the input method takes it for typing a Unicode code point.
  { id: "attach", keys: "Ctrl+Shift+A", label: "Attach a file to this conversation" },
  { id: "markRead", keys: "Ctrl+Shift+R", label: "Mark this conversation read" },
  { id: "newGroup", keys: "Ctrl+Shift+N", label: "New group" },
  { id: "groupMembers", keys: "Ctrl+Shift+G", label: "Members of this group (safety numbers, invite, rename, leave)" },
  { id: "focusMessages", keys: "Ctrl+Shift+L", label: "Go to the latest message (then ↑ ↓ move between messages)" },
  { id: "reply", keys: "Alt+R", label: "Reply to the selected message (or the last one received)" },
  { id: "edit", keys: "Alt+E", label: "Edit the selected message (or your last one)" },
  { id: "react", keys: "Alt+A", label: "React to the selected message (or the last one received)" },
  { id: "deleteMessage", keys: "Alt+D", label: "Delete the selected message (or your last one)" },
  { id: "settings", keys: "Ctrl+,", label: "Open settings" },
  { id: "help", keys: "Ctrl+/", label: "Show keyboard shortcuts" },
  { id: "send", keys: "Enter", label: "Send the message (in the composer)", native: true },
  { id: "newline", keys: "Shift+Enter", label: "New line (in the composer)", native: true },
  { id: "editLast", keys: "ArrowUp", label: "Edit your last message (in an empty composer)", native: true },
  { id: "close", keys: "Escape", label: "Close a dialog or the search", native: true },
]);

const KEY_NAMES = { ArrowUp: "↑", ArrowDown: "↓", Escape: "Esc" };

/** `"Ctrl+Shift+M"` → the parts a person reads: `["Ctrl", "Shift", "M"]` (arrows as arrows). */
export function keyLabels(keys) {
  return keys.split(/\+(?!$)/).map((k) => KEY_NAMES[k] || k);
}

function parse(keys) {
  const parts = keys.split(/\+(?!$)/);
  const key = parts.pop();
  return {
    ctrl: parts.includes("Ctrl"),
    shift: parts.includes("Shift"),
    alt: parts.includes("Alt"),
    key: key.length === 1 ? key.toLowerCase() : key,
  };
}

const PARSED = SHORTCUTS.filter((s) => !s.native).map((s) => ({ ...s, match: parse(s.keys) }));

function matches(m, e) {
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  return key === m.key
    && (e.ctrlKey || e.metaKey) === m.ctrl
    && e.altKey === m.alt
    // Shift is part of the key itself for punctuation ("/" vs "?"), so only letters and
    // named keys check it.
    && (m.key.length === 1 && !/[a-z]/.test(m.key) ? true : e.shiftKey === m.shift);
}

/**
 * Listens for the shortcuts. `actions` maps every non-native id to a function (a missing one is
 * an error at start, not a key that silently does nothing); while `dialogOpen()` only the help's
 * own key applies, and the dialog keeps Escape and Tab.
 */
export function initShortcuts(actions, dialogOpen) {
  const missing = PARSED.filter((s) => typeof actions[s.id] !== "function").map((s) => s.id);
  if (missing.length) throw new Error(`shortcuts without an action: ${missing.join(", ")}`);
  document.addEventListener("keydown", (e) => {
    if (e.defaultPrevented || e.isComposing) return;
    const hit = PARSED.find((m) => matches(m.match, e));
    if (!hit) return;
    if (dialogOpen() && hit.id !== "help") return;
    // An action that does not apply here (false: e.g. search on the first-run screen) leaves the
    // key to the page.
    if (actions[hit.id]() !== false) e.preventDefault();
  });
}
