// Readable notices in the corner: errors from commands and the backend's `error` events.

import { h, icon } from "../util.js";

const SHOW_MS = 6000;
const MAX_TOASTS = 4;

const root = () => document.getElementById("toasts");

/** Shows a notice {kind, message}; `kind` "info" is neutral, anything else is an error. */
export function showNotice(notice) {
  const message = notice && notice.message ? notice.message : "Something went wrong.";
  const isError = !notice || notice.kind !== "info";
  const el = h("div", { class: `toast ${isError ? "error" : "info"}`, role: "status", dataset: { kind: notice ? notice.kind : "" } },
    icon(isError ? "alert" : "check"), h("span", { text: message }));
  const container = root();
  container.append(el);
  while (container.children.length > MAX_TOASTS) container.firstElementChild.remove();
  setTimeout(() => el.remove(), SHOW_MS);
}

/** Removes the notices of one kind (e.g. once what they warned about is resolved). */
export function clearNotices(kind) {
  for (const el of root().querySelectorAll(".toast")) {
    if (el.dataset.kind === kind) el.remove();
  }
}
