// A new device: first run's *Link to an existing account* (server, account, device name; then
// the code, grouped 4+4 and copyable, this device's fingerprint, and a wait the person can
// cancel), and the removed screen of a linked device the first device removed.

import { api } from "../api.js";
import { paintFingerprint } from "../util.js";

const $ = (id) => document.getElementById(id);

function setError(message) {
  const el = $("link-error");
  el.textContent = message || "";
  el.hidden = !message;
}

function showStep(id) {
  for (const step of ["setup-form", "link-form", "link-wait"]) $(step).hidden = step !== id;
}

/** "ABCD-EFGH" or "ABCDEFGH" shown as "ABCD EFGH". */
function grouped(code) {
  const plain = code.replace(/[^0-9A-Za-z]/g, "");
  return `${plain.slice(0, 4)} ${plain.slice(4)}`;
}

/** Wires the link steps of the welcome view; `done(boot)` runs once this device is linked. */
export function initNewDevice(boot, done) {
  let running = false;
  $("link-server").value = boot.settings.serverMode === "connect" ? boot.settings.serverUrl : "";

  const back = () => {
    setError(null);
    showStep("setup-form");
    $("setup-link").focus();
  };
  $("setup-link").addEventListener("click", () => {
    showStep("link-form");
    (($("link-server").value === "") ? $("link-server") : $("link-account")).focus();
  });
  $("link-back").addEventListener("click", back);
  $("link-form").addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); back(); }
  });

  $("link-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (running) return;
    setError(null);
    const url = $("link-server").value.trim();
    const account = $("link-account").value.trim();
    const device = $("link-device").value.trim();
    for (const [value, field, message] of [
      [url, "link-server", "Enter the server address the account uses."],
      [account, "link-account", "Enter the account's name."],
      [device, "link-device", "Name this device, e.g. laptop."],
    ]) {
      if (value === "") {
        setError(message);
        $(field).focus();
        return;
      }
    }
    const submit = $("link-submit");
    submit.disabled = true;
    submit.textContent = "Connecting…";
    running = true;
    let shown;
    try {
      shown = await api.startLinking(url, account, device);
    } catch (err) {
      running = false;
      setError(err.message);
      submit.disabled = false;
      submit.textContent = "Get a linking code";
      return;
    }
    submit.disabled = false;
    submit.textContent = "Get a linking code";
    $("link-wait-account").textContent = account;
    $("link-code").textContent = grouped(shown.code);
    paintFingerprint($("link-fingerprint"), shown.fingerprint);
    $("link-status").textContent = "Waiting for the other computer to approve…";
    showStep("link-wait");
    $("link-copy").focus();
    try {
      const linked = await api.waitLinking();
      $("welcome").hidden = true;
      done(linked);
    } catch (err) {
      showStep("link-form");
      setError(err.message);
      $("link-submit").focus();
    } finally {
      running = false;
    }
  });

  $("link-copy").addEventListener("click", async () => {
    const code = $("link-code").textContent.replace(/\s/g, "");
    try {
      await navigator.clipboard.writeText(code);
      $("link-status").textContent = "Code copied. Waiting for the other computer to approve…";
    } catch {
      // No clipboard here: the code stays selectable by hand.
      window.getSelection().selectAllChildren($("link-code"));
    }
  });
  const cancel = () => api.cancelLinking().catch(() => {});
  $("link-wait-cancel").addEventListener("click", cancel);
  $("link-wait").addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); cancel(); }
  });
}

/** The removed screen of a linked device; "Keep reading" shows the history read-only. */
export function showRemoved(me, dataDir, keepReading) {
  const when = new Date(me.removedAt).toLocaleString();
  $("removed-text").textContent = `This device (${me.deviceId}) was removed from ${me.clientId} on ${when}. `
    + "Its messages stay on this computer; it can no longer send or receive.";
  $("removed-data-dir").textContent = dataDir || "";
  $("app").hidden = true;
  $("welcome").hidden = true;
  $("removed").hidden = false;
  const read = $("removed-read");
  read.onclick = () => {
    $("removed").hidden = true;
    keepReading();
  };
  read.focus();
}

/** Marks the window read-only after a removal: a banner above the conversations. */
export function markReadOnly(me) {
  document.body.classList.add("device-removed");
  if (document.getElementById("removed-banner")) return;
  const banner = document.createElement("p");
  banner.id = "removed-banner";
  banner.className = "removed-banner";
  banner.setAttribute("role", "status");
  banner.textContent = `This device was removed from ${me.clientId}: read-only.`;
  (document.querySelector(".sidebar") || document.body).prepend(banner);
}
