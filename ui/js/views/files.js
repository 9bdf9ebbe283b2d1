// Files in a conversation: the picture preview or the file card inside a message, its progress
// bar with pause / resume / cancel, Save / Save as… / Open, the full-size viewer, and sending by
// the Attach button, by pasting a picture and by dropping files.
//
// A conversation is named as a "chat": a peer id for a 1:1 chat, `{ groupId }` for a group
// (api.js turns either into the command's arguments).
//
// The page never names a path on disk: Attach opens the system's dialog in the backend, files
// dropped on the window reach the backend as paths from the window itself, and pasted (or
// page-dropped) files are handed over as bytes, at most MAX_INLINE_BYTES.

import { api, on } from "../api.js";
import { Event, TransferState } from "../contract.js";
import { peerById } from "../state.js";
import { formatSize, h, icon } from "../util.js";
import { showNotice } from "./toasts.js";

/** Largest file the page hands over as bytes (the backend refuses more too). */
export const MAX_INLINE_BYTES = 64 * 1024 * 1024;

const RUNNING = new Set([TransferState.QUEUED, TransferState.RUNNING]);

const $ = (id) => document.getElementById(id);

/** A short type label for the card: the extension, or the MIME type's second half. */
function typeLabel(file) {
  const dot = file.name.lastIndexOf(".");
  if (dot > 0 && dot > file.name.length - 7) return file.name.slice(dot + 1).toUpperCase();
  const sub = (file.mime || "").split("/")[1] || "file";
  return sub.replace(/^x-/, "").slice(0, 6).toUpperCase();
}

function kindClass(file) {
  const top = (file.mime || "").split("/")[0];
  if (file.mime === "application/pdf") return "kind-pdf";
  if (["image", "audio", "video", "text"].includes(top)) return `kind-${top}`;
  if (/zip|tar|gzip|compress|7z|rar/.test(file.mime || "")) return "kind-archive";
  return "kind-other";
}

function stateText(m) {
  const f = m.file;
  const moved = `${formatSize(f.done)} of ${formatSize(f.size)}`;
  switch (f.state) {
    case TransferState.QUEUED: return m.outgoing ? "Waiting to send…" : "Waiting to download…";
    case TransferState.RUNNING: return m.outgoing ? `Sending: ${moved}` : `Downloading: ${moved}`;
    case TransferState.PAUSED: return `Paused: ${moved}`;
    case TransferState.FAILED: return f.error || "The transfer failed.";
    case TransferState.CANCELLED: return m.outgoing ? "Cancelled" : "Cancelled: download again?";
    case TransferState.OFFERED: return `${formatSize(f.size)}: not downloaded yet`;
    default: return formatSize(f.size);
  }
}

function percent(f) {
  if (!f.size) return f.state === TransferState.COMPLETED ? 100 : 0;
  return Math.max(0, Math.min(100, Math.floor((f.done * 100) / f.size)));
}

/** Runs a file command for the message `m` of conversation `peer`, showing any error. */
async function act(promise) {
  try {
    return await promise;
  } catch (err) {
    showNotice(err);
    return null;
  }
}

async function save(peer, m) {
  const path = await act(api.saveFile(peer, m.seq));
  if (path) showNotice({ kind: "info", message: `Saved to ${path}` });
}

async function saveAs(peer, m) {
  const path = await act(api.saveFileAs(peer, m.seq));
  if (path) showNotice({ kind: "info", message: `Saved to ${path}` });
}

/**
 * A file button: `text` shown, and for screen readers the same words followed by the file's
 * name (so the name they hear starts with what is seen); `hint` adds a tooltip.
 */
function button(text, name, iconName, onclick, cls = "", hint = "") {
  const label = `${text} ${name}`;
  return h("button", {
    class: `file-action ${cls}`.trim(), type: "button", tabindex: "-1", title: hint || label,
    "aria-label": label, onclick,
  }, icon(iconName), h("span", { class: "file-action-text", text }));
}

/** The progress bar and its controls, while a transfer is under way or paused. */
function progress(peer, m) {
  const f = m.file;
  const verb = m.outgoing ? "Sending" : "Downloading";
  const bar = h("div", {
    class: "file-progress", role: "progressbar", "aria-label": `${verb} ${f.name}`,
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(percent(f)),
    "aria-valuetext": stateText(m),
  }, h("div", { class: "file-progress-fill", style: `width: ${percent(f)}%` }));
  const controls = [];
  if (RUNNING.has(f.state)) {
    controls.push(button("Pause", f.name, "pause", () => act(api.controlTransfer(peer, m.seq, "pause"))));
  } else if (f.state === TransferState.PAUSED) {
    controls.push(button("Resume", f.name, "play", () => act(api.controlTransfer(peer, m.seq, "resume"))));
  }
  controls.push(button("Cancel", f.name, "close", () => act(api.controlTransfer(peer, m.seq, "cancel")), "danger"));
  return h("div", { class: "file-transfer" }, bar, h("div", { class: "file-controls" }, ...controls));
}

/** What can be done with the file now. */
function actions(peer, m, openViewer) {
  const f = m.file;
  const out = [];
  if (f.local && f.state === TransferState.COMPLETED) {
    if (f.image) out.push(button("View", f.name, "search", () => openViewer(peer, m)));
    out.push(button("Save", f.name, "download", () => save(peer, m), "", `Save ${f.name} to the downloads folder`));
    out.push(button("Save as…", f.name, "file", () => saveAs(peer, m)));
    out.push(button("Open", f.name, "open", () => act(api.openFile(peer, m.seq))));
  } else if (!m.outgoing && [TransferState.OFFERED, TransferState.CANCELLED].includes(f.state)) {
    out.push(button("Download", f.name, "download", () => act(api.downloadFile(peer, m.seq)), "primary", `Download ${f.name} (${formatSize(f.size)})`));
  } else if (f.state === TransferState.FAILED) {
    out.push(button("Try again", f.name, "play", () => act(
      m.outgoing ? api.controlTransfer(peer, m.seq, "resume") : api.downloadFile(peer, m.seq),
    )));
  }
  return out.length ? h("div", { class: "file-actions" }, ...out) : null;
}

/**
 * The file part of message `m` in conversation `peer`: a picture preview or a card, the
 * transfer's progress and the actions. `openViewer(peer, m)` shows a downloaded picture.
 */
export function fileBlock(peer, m, openViewer = openPicture) {
  const f = m.file;
  const busy = RUNNING.has(f.state) || f.state === TransferState.PAUSED;
  const parts = [];
  // In a group, the member who sent it (MLS proved who; whether you compared their safety
  // number is the contact's own mark).
  const contact = peerById(typeof peer === "string" ? peer : m.sender);
  if (f.thumbnail) {
    const ready = f.local && f.state === TransferState.COMPLETED;
    const label = ready ? `View the picture ${f.name}` : `Picture ${f.name}, ${stateText(m)}`;
    const img = h("img", {
      class: "file-thumb", src: f.thumbnail, alt: "",
      width: String(f.thumbnailWidth || 320), height: String(f.thumbnailHeight || 240),
    });
    parts.push(h("button", {
      class: "file-preview", type: "button", tabindex: "-1", title: label, "aria-label": label,
      onclick: () => {
        if (ready) openViewer(peer, m);
        else if (!m.outgoing && [TransferState.OFFERED, TransferState.CANCELLED, TransferState.FAILED].includes(f.state)) {
          act(api.downloadFile(peer, m.seq));
        }
      },
    }, img));
  }
  parts.push(h("div", { class: `file-card ${kindClass(f)}` },
    h("span", { class: "file-icon", "aria-hidden": "true" }, icon("file"), h("span", { class: "file-type", text: typeLabel(f) })),
    h("span", { class: "file-info" },
      h("bdi", { class: "file-name", dir: "auto", text: f.name }),
      h("span", { class: "file-state", text: stateText(m) }))));
  if (busy) parts.push(progress(peer, m));
  const acts = actions(peer, m, openViewer);
  if (acts) parts.push(acts);
  if (!m.outgoing && contact && !contact.verified) {
    parts.push(h("span", {
      class: "file-note",
      title: "Compare safety numbers with this contact to verify who sent it",
    }, icon("alert"), "From a contact you have not verified"));
  }
  return h("div", {
    class: `file ${f.thumbnail ? "has-preview" : ""} state-${f.state}`.trim(),
    dataset: { state: f.state },
  }, ...parts);
}

/**
 * Moves the progress bar of a file block in place (no redraw, so focus stays on its buttons).
 * Returns false when the block must be redrawn (the state changed).
 */
export function updateProgress(li, m) {
  const block = li.querySelector(".file");
  if (!block || block.dataset.state !== m.file.state) return false;
  const bar = block.querySelector(".file-progress");
  if (bar) {
    bar.setAttribute("aria-valuenow", String(percent(m.file)));
    bar.setAttribute("aria-valuetext", stateText(m));
    bar.firstElementChild.style.width = `${percent(m.file)}%`;
  }
  const text = block.querySelector(".file-state");
  if (text) text.textContent = stateText(m);
  return true;
}

// ---------- the viewer ----------

let viewing = null; // { peer, m, url }

/** Opens a downloaded picture full size. */
export async function openPicture(peer, m) {
  const bytes = await act(api.fileBytes(peer, m.seq));
  if (!bytes) return;
  closeViewer();
  const url = URL.createObjectURL(new Blob([bytes], { type: m.file.mime }));
  viewing = { peer, m, url };
  $("viewer-title").textContent = m.file.name;
  $("viewer-info").textContent = formatSize(m.file.size);
  const img = $("viewer-image");
  img.alt = m.file.name;
  img.src = url;
  const dialog = $("viewer-dialog");
  if (!dialog.open) dialog.showModal();
}

function closeViewer() {
  if (viewing) URL.revokeObjectURL(viewing.url);
  viewing = null;
  const img = $("viewer-image");
  img.removeAttribute("src");
  img.alt = "";
}

// ---------- sending ----------

/** Sends files the page holds (pasted or dropped into the page) to chat `peer`. */
export async function sendBlobs(peer, files, upsert) {
  for (const file of files) {
    if (file.size > MAX_INLINE_BYTES) {
      showNotice({
        kind: "invalidInput",
        message: `${file.name || "That file"} is too large to paste (${formatSize(file.size)}); use Attach instead.`,
      });
      continue;
    }
    const name = file.name || `Pasted ${new Date().toISOString().slice(0, 19).replace("T", " ")}`;
    const bytes = new Uint8Array(await file.arrayBuffer());
    const m = await act(api.sendFileBytes(peer, name, bytes));
    if (m) upsert(m);
  }
}

/**
 * Wires Attach, paste, drop and the viewer. `current()` is the open conversation (or null);
 * `upsert(m)` shows a new or changed message; `elsewhere()` answers a drop when no 1:1 chat is
 * open (a group refuses it) and returns whether it did.
 */
export function initFiles(current, upsert, elsewhere = () => false) {
  const attach = async () => {
    const peer = current();
    if (peer === null) return false;
    const sent = await act(api.attachFile(peer));
    for (const m of sent || []) upsert(m);
    return true;
  };
  $("composer-attach").addEventListener("click", attach);

  // A picture (or any file) pasted into the composer is sent; text pastes as usual.
  $("composer-input").addEventListener("paste", (e) => {
    const files = Array.from((e.clipboardData && e.clipboardData.files) || []);
    const peer = current();
    if (files.length === 0 || peer === null) return;
    e.preventDefault();
    sendBlobs(peer, files, upsert);
  });

  // Files dropped into the page itself (the webview's own drag and drop).
  const conversation = $("conversation");
  const overlay = $("drop-overlay");
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  conversation.addEventListener("dragover", (e) => {
    if (!hasFiles(e) || current() === null) return;
    e.preventDefault();
    overlay.hidden = false;
  });
  conversation.addEventListener("dragleave", (e) => {
    if (e.target === overlay || !conversation.contains(e.relatedTarget)) overlay.hidden = true;
  });
  conversation.addEventListener("drop", (e) => {
    overlay.hidden = true;
    const peer = current();
    if (!hasFiles(e) || peer === null) return;
    e.preventDefault();
    sendBlobs(peer, Array.from(e.dataTransfer.files), upsert);
  });

  // Files dragged from the desktop onto the window: the window reports them to the backend.
  on(Event.DROP_HOVER, (hovering) => {
    overlay.hidden = !(hovering && current() !== null);
  });
  on(Event.FILES_DROPPED, async () => {
    overlay.hidden = true;
    const peer = current();
    if (peer === null) {
      if (!elsewhere()) {
        showNotice({ kind: "invalidInput", message: "Open a conversation first, then drop the files on it." });
      }
      return;
    }
    const sent = await act(api.sendDropped(peer));
    for (const m of sent || []) upsert(m);
  });

  const dialog = $("viewer-dialog");
  $("viewer-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", closeViewer);
  $("viewer-save").addEventListener("click", () => viewing && save(viewing.peer, viewing.m));
  $("viewer-save-as").addEventListener("click", () => viewing && saveAs(viewing.peer, viewing.m));
  $("viewer-open").addEventListener("click", () => viewing && act(api.openFile(viewing.peer, viewing.m.seq)));
  return attach;
}
