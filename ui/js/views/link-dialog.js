// Asking before a link from a message opens in the browser: the address in full (a link's text
// is its address, but a look-alike domain is easier to spot on its own line), Open or Cancel.

import { api } from "../api.js";
import { showNotice } from "./toasts.js";

let pending = null;
const $ = (id) => document.getElementById(id);

/** Asks whether to open `url` in the system browser; opens it if the person agrees. */
export function confirmLink(url) {
  pending = url;
  $("link-url").textContent = url;
  const dialog = $("link-dialog");
  if (!dialog.open) dialog.showModal();
  $("link-cancel").focus();
}

export function initLinkDialog() {
  const dialog = $("link-dialog");
  $("link-cancel").addEventListener("click", () => dialog.close());
  $("link-open").addEventListener("click", async () => {
    const url = pending;
    dialog.close();
    if (url === null) return;
    try {
      await api.openLink(url);
    } catch (err) {
      showNotice(err);
    }
  });
  dialog.addEventListener("close", () => { pending = null; });
}
