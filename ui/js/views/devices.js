// Devices, on the computer that holds the identity: Settings' *Devices* section (the linked
// devices from the signed list, each with the fingerprint of its key, and *Remove* after a
// confirmation saying what it does) and *Link a new device* (what to do on the new device, the
// code it shows, then its fingerprint to compare and *Approve* / *Refuse*). A request arriving
// while this dialog is closed raises a toast that opens it. Progress comes as the `link` event.

import { api, on, events } from "../api.js";
import { ErrorKind, LinkStage } from "../contract.js";
import { state } from "../state.js";
import { h, icon, paintFingerprint } from "../util.js";
import { showNotice } from "./toasts.js";

const $ = (id) => document.getElementById(id);

/** The request being answered: `{ relayId, deviceId }` once the code was right. */
let awaiting = null;
/** Whether a code was sent and its check is under way. */
let checking = false;
/** The device the remove dialog asks about. */
let removing = null;

function setError(id, message) {
  const el = $(id);
  el.textContent = message || "";
  el.hidden = !message;
}

/** On a linked device: this id's devices, read-only, "this device" marked; linking and
 * removing are the primary device's (it holds the identity key that signs the list). */
function renderLinkedDevices(list, me) {
  $("settings-devices-text").textContent = "The devices of your account. Linking and removing devices "
    + "is done on your primary device, the one that holds your identity.";
  $("settings-link-device").hidden = true;
  $("settings-devices").replaceChildren(...list.map((d) => h("li", { class: "member device", dataset: { deviceId: d.deviceId } },
    icon("device", "device-icon"),
    h("span", { class: "member-text" },
      h("span", { class: "member-name" }, d.deviceId,
        d.deviceId === me.deviceId ? h("span", { class: "this-device", text: "this device" }) : ""),
      h("span", { class: "member-fingerprint", text: d.fingerprint || "No valid key" })))));
  $("settings-devices-status").textContent = `Your primary device and ${list.length} linked `
    + `${list.length === 1 ? "device" : "devices"}.`;
}

function renderDevices(list) {
  if (state.me && state.me.deviceId) {
    renderLinkedDevices(list, state.me);
    return;
  }
  const ul = $("settings-devices");
  ul.replaceChildren(...list.map((d) => h("li", { class: "member device", dataset: { deviceId: d.deviceId } },
    icon("device", "device-icon"),
    h("span", { class: "member-text" },
      h("span", { class: "member-name", text: d.deviceId }),
      h("span", { class: "member-fingerprint", text: d.fingerprint || "No valid key" })),
    h("button", {
      class: "button small", type: "button", text: "Remove",
      "aria-label": `Remove ${d.deviceId}`, onclick: () => openRemove(d.deviceId),
    }))));
  $("settings-devices-status").textContent = list.length === 0
    ? "No other device is linked. This computer is the only one."
    : `${list.length} linked ${list.length === 1 ? "device" : "devices"}, besides this computer.`;
}

/** Fills the *Devices* section; called whenever Settings opens. */
export async function loadDevices() {
  if (state.me && state.me.deviceId) {
    // A linked device holds no identity: a backup of one is the primary's to make.
    $("settings-backup-text").textContent = "Backups are made on your primary device: this one "
      + "holds no identity of its own to back up.";
    $("settings-backup").hidden = true;
  }
  $("settings-devices-status").textContent = "Loading the devices…";
  $("settings-devices").replaceChildren();
  try {
    renderDevices(await api.listDevices());
  } catch (err) {
    $("settings-devices-status").textContent = err.message;
  }
}

// ---------- Remove ----------

function openRemove(deviceId) {
  removing = deviceId;
  $("device-remove-name").textContent = deviceId;
  setError("device-remove-error", null);
  $("device-remove-dialog").showModal();
  $("device-remove-cancel").focus();
}

async function confirmRemove() {
  if (removing === null) return;
  const button = $("device-remove-confirm");
  button.disabled = true;
  try {
    renderDevices(await api.removeDevice(removing));
    showNotice({ kind: "info", message: `${removing} was removed and signed out.` });
    $("device-remove-dialog").close();
  } catch (err) {
    setError("device-remove-error", err.message);
  } finally {
    button.disabled = false;
  }
}

// ---------- Link a new device ----------

function showCodeStep() {
  awaiting = null;
  checking = false;
  $("device-link-code-step").hidden = false;
  $("device-link-compare-step").hidden = true;
  $("device-link-refuse").hidden = true;
  $("device-link-submit").textContent = "Continue";
  $("device-link-submit").disabled = false;
  $("device-link-checking").hidden = true;
}

/** Opens *Link a new device*; `deviceId` names a request that already arrived. */
export function openLinkDevice(deviceId = null) {
  const dialog = $("device-link-dialog");
  if (!dialog.open) {
    showCodeStep();
    setError("device-link-error", null);
    $("device-link-code").value = "";
    $("device-link-me").textContent = state.me ? state.me.clientId : "";
    dialog.showModal();
  }
  $("device-link-waiting").textContent = deviceId
    ? `"${deviceId}" asks to be linked: type the code it shows.`
    : "";
  if (!awaiting) $("device-link-code").focus();
}

async function submitLink(e) {
  e.preventDefault();
  setError("device-link-error", null);
  if (awaiting) {
    await answer(true);
    return;
  }
  if (checking) return;
  const code = $("device-link-code").value.trim();
  if (code.length === 0) {
    setError("device-link-error", "Type the 8-character code the new device shows.");
    $("device-link-code").focus();
    return;
  }
  checking = true;
  $("device-link-submit").disabled = true;
  $("device-link-checking").hidden = false;
  try {
    await api.enterLinkCode(code);
    // The answer comes as a `link` event: the fingerprint to compare, or why it failed.
  } catch (err) {
    checking = false;
    $("device-link-submit").disabled = false;
    $("device-link-checking").hidden = true;
    setError("device-link-error", err.message);
    $("device-link-code").select();
  }
}

async function answer(approve) {
  const request = awaiting;
  if (!request) return;
  for (const id of ["device-link-submit", "device-link-refuse"]) $(id).disabled = true;
  // Answered now: closing the dialog (the `approved` event does) must not refuse it again.
  awaiting = null;
  try {
    await api.answerLink(request.relayId, approve);
    if (!approve) {
      $("device-link-dialog").close();
      showNotice({ kind: "info", message: `${request.deviceId} was refused; nothing was linked.` });
    }
    // Approval ends with the `approved` event.
  } catch (err) {
    setError("device-link-error", err.message);
    showCodeStep();
    $("device-link-code").value = "";
    $("device-link-code").focus();
  } finally {
    for (const id of ["device-link-submit", "device-link-refuse"]) $(id).disabled = false;
  }
}

/** Closing the dialog while a device waits for approval refuses it, so it stops waiting. */
function onLinkClosed() {
  const request = awaiting;
  awaiting = null;
  checking = false;
  if (request) api.answerLink(request.relayId, false).catch(() => {});
}

function requestToast(deviceId) {
  const container = $("toasts");
  for (const old of container.querySelectorAll(".toast.link-request")) old.remove();
  const toast = h("div", { class: "toast info link-request", role: "status" },
    icon("device"),
    h("span", { class: "toast-text", text: `A new device, "${deviceId}", asks to be linked to your account.` }),
    h("button", {
      class: "button small primary", type: "button", text: "Link…",
      onclick: () => { toast.remove(); openLinkDevice(deviceId); },
    }),
    h("button", {
      class: "icon-button toast-close", type: "button", "aria-label": "Dismiss",
      onclick: () => toast.remove(),
    }, icon("close")));
  container.append(toast);
}

function onLink(view) {
  const dialog = $("device-link-dialog");
  switch (view.stage) {
    case LinkStage.REQUEST:
      if (dialog.open) {
        if (!awaiting) $("device-link-waiting").textContent = `"${view.deviceId}" asks to be linked: type the code it shows.`;
      } else if (document.querySelector("dialog[open]")) {
        // A toast would sit behind the open dialog, out of reach: ask on top of it.
        openLinkDevice(view.deviceId);
      } else {
        requestToast(view.deviceId);
      }
      break;
    case LinkStage.AWAITING_APPROVAL:
      if (!dialog.open) break;
      checking = false;
      awaiting = { relayId: view.relayId, deviceId: view.deviceId };
      $("device-link-checking").hidden = true;
      $("device-link-code-step").hidden = true;
      $("device-link-compare-step").hidden = false;
      $("device-link-device").textContent = view.deviceId;
      paintFingerprint($("device-link-fingerprint"), view.fingerprint);
      $("device-link-refuse").hidden = false;
      $("device-link-submit").textContent = "Approve";
      $("device-link-submit").disabled = false;
      $("device-link-refuse").focus();
      break;
    case LinkStage.APPROVED:
      awaiting = null;
      if (dialog.open) dialog.close();
      showNotice({ kind: "info", message: `${view.deviceId} is linked: it reads and sends messages as you.` });
      if ($("settings-dialog").open) loadDevices();
      break;
    case LinkStage.FAILED:
      if (!dialog.open) {
        showNotice({ kind: ErrorKind.PEER, message: view.message });
        break;
      }
      showCodeStep();
      // That request is spent: the new device starts again and asks anew.
      $("device-link-waiting").textContent = "";
      setError("device-link-error", view.message);
      $("device-link-code").value = "";
      $("device-link-code").focus();
      break;
    default:
      break;
  }
}

export async function initDevices() {
  $("settings-link-device").addEventListener("click", () => openLinkDevice());
  $("device-link-form").addEventListener("submit", submitLink);
  $("device-link-refuse").addEventListener("click", () => answer(false));
  const close = () => $("device-link-dialog").close();
  $("device-link-cancel").addEventListener("click", close);
  $("device-link-close").addEventListener("click", close);
  $("device-link-dialog").addEventListener("close", onLinkClosed);
  $("device-remove-cancel").addEventListener("click", () => $("device-remove-dialog").close());
  $("device-remove-confirm").addEventListener("click", confirmRemove);
  $("device-remove-dialog").addEventListener("close", () => { removing = null; });
  await on(events.LINK, onLink);
}
