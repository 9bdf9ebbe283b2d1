// The page's only door to the backend: every command and event goes through here.
// Commands reject with {kind, code?, message}; `message` is always a sentence fit to show.
// Event names, statuses and kinds come from contract.js, generated from the backend.

import { ErrorKind, Event } from "./contract.js";

const tauri = window.__TAURI__;

function normalizeError(err) {
  if (err && typeof err === "object" && typeof err.message === "string") {
    const out = { kind: err.kind || ErrorKind.INTERNAL, message: err.message };
    if (err.code) out.code = err.code;
    return out;
  }
  if (typeof err === "string" && err.length > 0) {
    return { kind: ErrorKind.INTERNAL, message: err };
  }
  return { kind: ErrorKind.INTERNAL, message: "Something went wrong." };
}

async function call(command, args) {
  try {
    return await tauri.core.invoke(command, args);
  } catch (err) {
    throw normalizeError(err);
  }
}

/** Invokes `command` with raw bytes as its body and small text arguments as headers. */
async function callWithBytes(command, bytes, headers) {
  try {
    return await tauri.core.invoke(command, bytes, { headers });
  } catch (err) {
    throw normalizeError(err);
  }
}

/** The arguments naming a file's conversation: `{ peerId }` for a peer id, `{ groupId }` for a
 * group (given as `{ groupId }`). */
function chatArgs(chat) {
  return typeof chat === "string" ? { peerId: chat } : { groupId: chat.groupId };
}

/** Subscribes to a backend event; returns a function that unsubscribes. */
export async function on(event, handler) {
  return tauri.event.listen(event, (e) => handler(e.payload));
}

export const api = {
  bootstrap: () => call("bootstrap"),
  completeSetup: (clientId, serverMode, serverUrl) =>
    call("complete_setup", { clientId, serverMode, serverUrl }),
  /** A page of history: the latest, those before `before`, or those after `after` (seqs). */
  loadMessages: (peerId, before, limit, after = null) =>
    call("load_messages", { peerId, before, after, limit }),
  /** Sends `text`; with `replyTo` (a `seq`) as a reply quoting that message. */
  sendMessage: (peerId, text, replyTo = null) => call("send_message", { peerId, text, replyTo }),
  // The message actions name their conversation as a chat: a peer id or `{ groupId }`.
  editMessage: (chat, seq, text) => call("edit_message", { ...chatArgs(chat), seq, text }),
  /** For everyone, or (a 1:1 chat only) on this device. */
  deleteMessage: (chat, seq, forEveryone) =>
    call("delete_message", { ...chatArgs(chat), seq, forEveryone }),
  /** Reacts with `emoji`, or takes that reaction back (a toggle). */
  react: (chat, seq, emoji) => call("react", { ...chatArgs(chat), seq, emoji }),
  messageVersions: (chat, seq) => call("message_versions", { ...chatArgs(chat), seq }),
  typing: (peerId, typing) => call("typing", { peerId, typing }),
  markRead: (peerId) => call("mark_read", { peerId }),
  answerQuestion: (questionId, response) => call("answer_question", { questionId, response }),
  dismissQuestion: (questionId) => call("dismiss_question", { questionId }),
  updateSettings: (patch) => call("update_settings", { patch }),
  acceptKeyChange: (peerId, fingerprint) => call("accept_key_change", { peerId, fingerprint }),
  setVerified: (peerId, verified) => call("set_verified", { peerId, verified }),
  reconnect: () => call("reconnect"),
  demoQuestion: () => call("demo_question"),
  /** Searches the local history: one conversation (`peerId`, or `{ groupId }` for a group) or
   * all (`null`, groups included); newest first. */
  searchMessages: (query, chat = null, limit = null) =>
    call("search_messages", { query, ...(chat === null ? {} : chatArgs(chat)), limit }),
  loadDraft: (peerId) => call("load_draft", { peerId }),
  saveDraft: (peerId, text) => call("save_draft", { peerId, text }),
  /** Opens a web link in the system browser (ask the person first). */
  openLink: (url) => call("open_link", { url }),
  /** The folder backups and exports are suggested in. */
  backupFolder: () => call("backup_folder"),
  /** Writes a passphrase-sealed backup of this profile to a new file at `path`. */
  exportBackup: (path, passphrase) => call("export_backup", { path, passphrase }),
  /** Restores a backup onto this fresh profile; returns the new bootstrap. */
  restoreBackup: (path, passphrase) => call("restore_backup", { path, passphrase }),
  /** Writes one conversation as "html" or "json" to a new file at `path`. */
  exportConversation: (peerId, path, format) =>
    call("export_conversation", { peerId, path, format }),
  /** Writes a group's history as "html" or "json" to a new file at `path`. */
  exportGroup: (groupId, path, format) =>
    call("export_conversation", { groupId, path, format }),
  // The file commands name their conversation as a chat: a peer id (a 1:1 chat) or
  // `{ groupId }` (a group); see `chatArgs`.
  /** Asks for files in the system's open dialog and sends them; resolves to the new messages. */
  attachFile: (chat) => call("attach_file", chatArgs(chat)),
  /** Sends the files just dropped on the window (the backend has their paths). */
  sendDropped: (chat) => call("send_dropped", chatArgs(chat)),
  /** Sends a file the page holds as bytes (a pasted image, a file dropped into the page). */
  sendFileBytes: (chat, name, bytes) => callWithBytes("send_file_bytes", bytes, {
    ...(typeof chat === "string"
      ? { "x-lattice-peer": encodeURIComponent(chat) }
      : { "x-lattice-group": encodeURIComponent(chat.groupId) }),
    "x-lattice-name": encodeURIComponent(name),
  }),
  /** Starts downloading the file of message `seq`. */
  downloadFile: (chat, seq) => call("download_file", { ...chatArgs(chat), seq }),
  /** Pauses, resumes or cancels the transfer of message `seq`'s file. */
  controlTransfer: (chat, seq, action) => call("control_transfer", { ...chatArgs(chat), seq, action }),
  /** Copies a file to the downloads folder; resolves to where it went. */
  saveFile: (chat, seq) => call("save_file", { ...chatArgs(chat), seq }),
  /** Copies a file where the system's save dialog says; resolves to the path or null. */
  saveFileAs: (chat, seq) => call("save_file_as", { ...chatArgs(chat), seq }),
  /** Opens a file with the system's app for its type. */
  openFile: (chat, seq) => call("open_file", { ...chatArgs(chat), seq }),
  /** A picture's bytes, for the viewer. */
  fileBytes: (chat, seq) => call("file_bytes", { ...chatArgs(chat), seq }),
  /** Creates a group named `name` with `members` (client ids); resolves to its GroupView. */
  createGroup: (name, members) => call("create_group", { name, members }),
  /** A page of a group's history: the latest, or those before `before` (a seq). */
  loadGroupMessages: (groupId, before, limit) => call("load_group_messages", { groupId, before, limit }),
  /** Sends `text` to the group; with `replyTo` (a line's `seq`) as a reply quoting it. */
  sendGroupMessage: (groupId, text, replyTo = null) =>
    call("send_group_message", { groupId, text, replyTo }),

  markGroupRead: (groupId) => call("mark_group_read", { groupId }),
  groupTyping: (groupId, typing) => call("group_typing", { groupId, typing }),
  /** The member panel: the group, its members with safety numbers, its epoch. */
  groupDetails: (groupId) => call("group_details", { groupId }),
  inviteToGroup: (groupId, members) => call("invite_to_group", { groupId, members }),
  removeFromGroup: (groupId, member) => call("remove_from_group", { groupId, member }),
  renameGroup: (groupId, name) => call("rename_group", { groupId, name }),
  leaveGroup: (groupId) => call("leave_group", { groupId }),
  /** This account's linked devices (`DeviceView[]`), from its signed device list. */
  listDevices: () => call("list_devices"),
  /** Removes a linked device; resolves to the list as it is now. */
  removeDevice: (deviceId) => call("remove_device", { deviceId }),
  /** The code a new device shows; the outcome comes as the `link` event. */
  enterLinkCode: (code) => call("enter_link_code", { code }),
  /** Approves (or refuses) the new device whose fingerprint was compared. */
  answerLink: (relayId, approve) => call("answer_link", { relayId, approve }),
  /** New device: starts linking to `clientId`; resolves to `{ code, fingerprint, validSecs }`. */
  startLinking: (serverUrl, clientId, deviceName) => call("start_linking", { serverUrl, clientId, deviceName }),
  /** New device: resolves to the bootstrap once approved; rejects with why not. */
  waitLinking: () => call("wait_linking"),
  cancelLinking: () => call("cancel_linking"),
};

/** The backend's event names (`events.PEER_LIST`, ...). */
export const events = Event;
