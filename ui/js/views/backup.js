// Backup, restore and conversation export: one dialog with three tasks.
// - Back up (Settings → Backup): a file path and a passphrase typed twice (at least 12
//   characters, checked here and again by the backend).
// - Restore (first run → "Restore from backup"): a file path and the passphrase; on success the
//   app opens as the restored identity.
// - Export a conversation (conversation header → Export): HTML or JSON to a file path.
// The passphrase fields are emptied as soon as the call returns or the dialog closes.

import { api } from "../api.js";

const $ = (id) => document.getElementById(id);

/** Must match storage::backup::MIN_PASSPHRASE_CHARS. */
const MIN_PASSPHRASE_CHARS = 12;

let task = null; // { kind: "backup" | "restore" | "conversation", peerId? | groupId? and name?, done? }
let busy = false;

function today() {
  return new Date().toISOString().slice(0, 10);
}

function join(folder, name) {
  if (!folder) return name;
  const sep = folder.includes("\\") && !folder.includes("/") ? "\\" : "/";
  return folder.endsWith(sep) ? folder + name : folder + sep + name;
}

async function suggest(name) {
  try {
    return join(await api.backupFolder(), name);
  } catch {
    return name;
  }
}

function format() {
  return $("backup-format-json").checked ? "json" : "html";
}

function clearSecrets() {
  $("backup-passphrase").value = "";
  $("backup-confirm").value = "";
}

function showError(message, focus) {
  $("backup-error").textContent = message;
  $("backup-error").hidden = false;
  if (focus) focus.focus();
}

const TEXT = {
  backup: {
    title: "Back up",
    intro: "Your identity, contacts, safety numbers, settings and all messages go into one file locked with a passphrase. Keep both safe: anyone with the file and the passphrase can read your messages and act as you; without the passphrase nobody can restore it, not even you.",
    submit: "Back up",
    hint: `At least ${MIN_PASSPHRASE_CHARS} characters. It cannot be recovered if you forget it.`,
  },
  restore: {
    title: "Restore from backup",
    intro: "Bring back your identity, contacts, safety numbers and messages from a Lattice backup file. This works only on a fresh start, before an identity is created here.",
    submit: "Restore",
    hint: "The passphrase chosen when the backup was made.",
  },
  conversation: {
    title: "Export conversation",
    intro: "",
    submit: "Export",
    hint: "",
  },
};

async function open(next) {
  task = next;
  const text = TEXT[task.kind];
  $("backup-title").textContent = text.title;
  $("backup-intro").textContent = task.kind === "conversation"
    ? `Save ${task.groupId ? `the history of the group ${task.name}` : `the conversation with ${task.peerId}`} as a readable web page or as data. The file is not encrypted.`
    : text.intro;
  $("backup-submit").textContent = text.submit;
  $("backup-passphrase-hint").textContent = text.hint;
  $("backup-secret").hidden = task.kind === "conversation";
  $("backup-confirm-field").hidden = task.kind !== "backup";
  $("backup-passphrase").autocomplete = task.kind === "backup" ? "new-password" : "current-password";
  $("backup-format-field").hidden = task.kind !== "conversation";
  $("backup-error").hidden = true;
  $("backup-status").textContent = "";
  clearSecrets();
  const dialog = $("backup-dialog");
  if (!dialog.open) dialog.showModal();
  $("backup-path").value = "";
  if (task.kind === "backup") {
    const me = task.clientId || "lattice";
    $("backup-path").value = await suggest(`lattice-${me}-${today()}.lattice-backup`);
  } else if (task.kind === "conversation") {
    const who = task.groupId ? `group-${task.name.replace(/[^\p{L}\p{N}_-]+/gu, "-")}` : task.peerId;
    $("backup-path").value = await suggest(`lattice-${who}-${today()}.${format()}`);
  } else {
    $("backup-path").value = await suggest("");
  }
  $("backup-path").focus();
}

/** Opens the dialog to back up this profile (from the settings). */
export function openBackup(clientId) {
  return open({ kind: "backup", clientId });
}

/** Opens the dialog to restore a backup; `done(boot)` gets the restored app's bootstrap. */
export function openRestore(done) {
  return open({ kind: "restore", done });
}

/** Opens the dialog to export the conversation with `peerId`. */
export function openConversationExport(peerId) {
  return open({ kind: "conversation", peerId });
}

/** Opens the dialog to export the history of group `groupId`, named `name`. */
export function openGroupExport(groupId, name) {
  return open({ kind: "conversation", groupId, name });
}

async function submit(e) {
  e.preventDefault();
  if (busy || task === null) return;
  $("backup-error").hidden = true;
  const path = $("backup-path").value.trim();
  if (path.length === 0) {
    showError("Give the file's full path.", $("backup-path"));
    return;
  }
  const passphrase = $("backup-passphrase").value;
  if (task.kind === "backup") {
    if ([...passphrase].length < MIN_PASSPHRASE_CHARS) {
      showError(`Choose a passphrase of at least ${MIN_PASSPHRASE_CHARS} characters.`, $("backup-passphrase"));
      return;
    }
    if (passphrase !== $("backup-confirm").value) {
      showError("The two passphrases differ. Type the same one twice.", $("backup-confirm"));
      return;
    }
  } else if (task.kind === "restore" && passphrase.length === 0) {
    showError("Type the backup's passphrase.", $("backup-passphrase"));
    return;
  }
  busy = true;
  const button = $("backup-submit");
  button.disabled = true;
  const working = { backup: "Backing up… (deriving the key takes a moment)", restore: "Checking and restoring…", conversation: "Exporting…" };
  $("backup-status").textContent = working[task.kind];
  const current = task;
  try {
    if (current.kind === "backup") {
      const r = await api.exportBackup(path, passphrase);
      clearSecrets();
      $("backup-status").textContent = `Backed up ${r.messages} messages and ${r.contacts} contacts to ${r.path}.`;
      $("backup-cancel").textContent = "Close";
      $("backup-cancel").focus();
    } else if (current.kind === "restore") {
      const boot = await api.restoreBackup(path, passphrase);
      clearSecrets();
      $("backup-dialog").close();
      if (current.done) current.done(boot);
    } else {
      const r = current.groupId
        ? await api.exportGroup(current.groupId, path, format())
        : await api.exportConversation(current.peerId, path, format());
      $("backup-status").textContent = `Exported ${r.messages} messages to ${r.path}.`;
      $("backup-cancel").textContent = "Close";
      $("backup-cancel").focus();
    }
  } catch (err) {
    clearSecrets();
    $("backup-status").textContent = "";
    showError(err.message, current.kind === "conversation" ? $("backup-path") : $("backup-passphrase"));
  } finally {
    busy = false;
    button.disabled = false;
  }
}

export function initBackup() {
  const dialog = $("backup-dialog");
  $("backup-form").addEventListener("submit", submit);
  $("backup-close").addEventListener("click", () => dialog.close());
  $("backup-cancel").addEventListener("click", () => dialog.close());
  // A running call finishes even if the dialog closes; the dialog only stops showing it.
  dialog.addEventListener("close", () => {
    clearSecrets();
    $("backup-cancel").textContent = "Cancel";
    task = null;
  });
  for (const id of ["backup-format-html", "backup-format-json"]) {
    $(id).addEventListener("change", () => {
      const path = $("backup-path").value;
      $("backup-path").value = path.replace(/\.(html|json)$/, `.${format()}`);
    });
  }
}
