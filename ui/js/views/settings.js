// The settings dialog: profile and safety number, server choice, behaviour, the demo question.

import { api } from "../api.js";
import { state, set } from "../state.js";
import { paintFingerprint } from "../util.js";
import { showNotice } from "./toasts.js";
import { openBackup } from "./backup.js";
import { loadDevices } from "./devices.js";

const $ = (id) => document.getElementById(id);

function mode() {
  const checked = document.querySelector('input[name="settingsServerMode"]:checked');
  return checked ? checked.value : "host";
}

function syncModeFields() {
  const host = mode() === "host";
  $("settings-port-field").hidden = !host;
  $("settings-url-field").hidden = host;
}

function fill() {
  const s = state.settings;
  $("settings-name").value = s.clientId || "";
  for (const r of document.querySelectorAll('input[name="settingsServerMode"]')) r.checked = r.value === s.serverMode;
  $("settings-port").value = String(s.hostPort);
  $("settings-url").value = s.serverUrl;
  $("settings-notifications").checked = s.notifications;
  $("settings-close-to-tray").checked = s.closeToTray;
  $("settings-start-minimized").checked = s.startMinimized;
  $("settings-read-receipts").checked = s.readReceipts;
  $("settings-typing-indicators").checked = s.typingIndicators;
  $("settings-auto-download").value = String(Math.round(s.autoDownloadBytes / 1e6));
  $("settings-downloads-folder").value = s.downloadsFolder || "";
  paintFingerprint($("settings-fingerprint"), state.me ? state.me.fingerprint : "");
  $("settings-data-dir").textContent = state.dataDir;
  $("settings-error").hidden = true;
  syncModeFields();
}

export function openSettings() {
  fill();
  $("settings-dialog").showModal();
  loadDevices();
}

async function save(e) {
  e.preventDefault();
  const s = state.settings;
  const patch = {};
  const name = $("settings-name").value.trim();
  if (name !== s.clientId) patch.clientId = name;
  if (mode() !== s.serverMode) patch.serverMode = mode();
  const port = Number($("settings-port").value);
  if (mode() === "host" && port !== s.hostPort) patch.hostPort = port;
  const url = $("settings-url").value.trim();
  if (mode() === "connect" && url !== s.serverUrl) patch.serverUrl = url;
  for (const [key, id] of [["notifications", "settings-notifications"], ["closeToTray", "settings-close-to-tray"], ["startMinimized", "settings-start-minimized"], ["readReceipts", "settings-read-receipts"], ["typingIndicators", "settings-typing-indicators"]]) {
    if ($(id).checked !== s[key]) patch[key] = $(id).checked;
  }
  const autoMb = Number($("settings-auto-download").value);
  if (Number.isFinite(autoMb) && autoMb >= 0 && Math.round(autoMb * 1e6) !== s.autoDownloadBytes) {
    patch.autoDownloadBytes = Math.round(autoMb * 1e6);
  }
  const folder = $("settings-downloads-folder").value.trim();
  if (folder !== (s.downloadsFolder || "")) patch.downloadsFolder = folder;
  if (Object.keys(patch).length === 0) {
    $("settings-dialog").close();
    return;
  }
  $("settings-save").disabled = true;
  try {
    const boot = await api.updateSettings(patch);
    set("settings", boot.settings);
    set("me", boot.me);
    $("settings-dialog").close();
  } catch (err) {
    $("settings-error").textContent = err.message;
    $("settings-error").hidden = false;
  } finally {
    $("settings-save").disabled = false;
  }
}

export function initSettings() {
  $("open-settings").addEventListener("click", openSettings);
  $("settings-form").addEventListener("submit", save);
  $("settings-close").addEventListener("click", () => $("settings-dialog").close());
  $("settings-cancel").addEventListener("click", () => $("settings-dialog").close());
  for (const r of document.querySelectorAll('input[name="settingsServerMode"]')) r.addEventListener("change", syncModeFields);
  $("settings-backup").addEventListener("click", () => {
    $("settings-dialog").close();
    openBackup(state.settings.clientId);
  });
  $("settings-demo-question").addEventListener("click", async () => {
    try {
      await api.demoQuestion();
      $("settings-dialog").close();
    } catch (err) {
      showNotice(err);
    }
  });
}
