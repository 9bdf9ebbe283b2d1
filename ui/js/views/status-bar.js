// The connection indicator at the bottom of the sidebar: connected / reconnecting in N s / offline.

import { api } from "../api.js";
import { ConnectionState } from "../contract.js";
import { showNotice } from "./toasts.js";

let countdown = null;

function describe(c, secondsLeft) {
  switch (c.state) {
    case ConnectionState.CONNECTED:
      return c.hosting ? "Connected · hosting a server" : `Connected to ${c.serverUrl || "server"}`;
    case ConnectionState.CONNECTING:
      return `Connecting to ${c.serverUrl || "server"}…`;
    case ConnectionState.RECONNECTING:
      return secondsLeft > 0 ? `Reconnecting in ${secondsLeft} s…` : "Reconnecting…";
    default:
      return c.detail ? `Offline — ${c.detail}` : "Offline";
  }
}

/** Renders the connection state. */
export function renderConnection(c) {
  const bar = document.getElementById("status-bar");
  const text = document.getElementById("status-text");
  const retry = document.getElementById("status-retry");
  const sub = document.getElementById("status-sub");
  if (!c) return;
  // When hosting, the address to give others, always visible.
  sub.hidden = !c.hosting;
  sub.textContent = c.hosting ? `Others join at ${c.hosting}` : "";
  clearInterval(countdown);
  countdown = null;
  bar.dataset.state = c.state;
  retry.hidden = c.state !== ConnectionState.OFFLINE;
  text.title = c.serverUrl || "";
  let left = c.retryInSecs || 0;
  text.textContent = describe(c, left);
  if (c.state === ConnectionState.RECONNECTING && left > 0) {
    countdown = setInterval(() => {
      left -= 1;
      text.textContent = describe(c, left);
      if (left <= 0) clearInterval(countdown);
    }, 1000);
  }
}

export function initStatusBar() {
  document.getElementById("status-retry").addEventListener("click", async () => {
    try {
      await api.reconnect();
    } catch (err) {
      showNotice(err);
    }
  });
}
