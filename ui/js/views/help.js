// The keyboard shortcuts dialog (Ctrl+/), drawn from the one table in shortcuts.js.

import { SHORTCUTS, keyLabels } from "../shortcuts.js";
import { h } from "../util.js";

const $ = (id) => document.getElementById(id);

function keysCell(keys) {
  const labels = keyLabels(keys);
  const out = [];
  labels.forEach((k, i) => {
    if (i > 0) out.push(h("span", { class: "plus", "aria-hidden": "true" }, "+"));
    out.push(h("kbd", {}, k));
  });
  return h("td", { class: "keys" }, out);
}

/** Opens the help, or closes it when it is open (the same key toggles it). */
export function toggleHelp() {
  const dialog = $("help-dialog");
  if (dialog.open) {
    dialog.close();
    return;
  }
  // Another dialog is open: the help is about the main window, so it waits.
  if (document.querySelector("dialog[open]")) return;
  dialog.showModal();
  $("help-close").focus();
}

export function initHelp() {
  $("help-rows").replaceChildren(...SHORTCUTS.map((s) => h("tr", { dataset: { shortcut: s.id } },
    h("th", { scope: "row", text: s.label }),
    keysCell(s.keys))));
  $("help-close").addEventListener("click", () => $("help-dialog").close());
}
