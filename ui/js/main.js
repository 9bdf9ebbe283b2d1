// Entry point: asks the backend for everything it needs to draw, then listens for changes.

import { api, on, events } from "./api.js";
import { ErrorKind } from "./contract.js";
import { set, state, subscribe } from "./state.js";
import { paintAvatar } from "./util.js";
import { initPeerList, renderPeers } from "./views/peer-list.js";
import {
  closeConversation, currentPeer, focusComposer, initConversation, markCurrentRead, messageShortcuts, onTransfer,
  onTyping, openConversation, refreshConversationPeer, removeMessage, upsertMessage,
} from "./views/conversation.js";
import { initFiles } from "./views/files.js";
import {
  closeGroup, currentGroup, focusGroupComposer, groupById, groupOfKey, initGroups, markGroupRead, openGroup,
  attachToGroup, dropOnGroup, groupShortcuts, openMembers, openNewGroup, refreshGroup, upsertGroupLine,
} from "./views/groups.js";
import { initMessageActions } from "./views/message-actions.js";
import { announceMessage } from "./views/announcer.js";
import { initHelp, toggleHelp } from "./views/help.js";
import { initBackup, openConversationExport } from "./views/backup.js";
import { initLinkDialog } from "./views/link-dialog.js";
import { initSearch, openSearch } from "./views/search.js";
import { initShortcuts } from "./shortcuts.js";
import { initQuestionDialog, onQuestion, onQuestionClosed } from "./views/question-dialog.js";
import { initSettings, openSettings } from "./views/settings.js";
import { initDevices } from "./views/devices.js";
import { initStatusBar, renderConnection } from "./views/status-bar.js";
import { initVerify, refreshVerify } from "./views/verify.js";
import { showFirstRun } from "./views/first-run.js";
import { markReadOnly, showRemoved } from "./views/new-device.js";
import { showNotice } from "./views/toasts.js";

/**
 * Opens the conversation with `peerId` (at the message `seq` if given: a search result), or the
 * group whose sidebar key (`group:<id>`) it is.
 */
function select(peerId, seq = null) {
  set("selected", peerId);
  renderPeers();
  const group = groupOfKey(peerId);
  if (group !== null) {
    closeConversation();
    openGroup(group, seq);
  } else {
    closeGroup();
    openConversation(peerId, seq);
  }
}

/** Opens the conversation `step` rows below (or above) the open one in the peer list. */
function selectNeighbour(step) {
  const rows = Array.from(document.querySelectorAll("#peer-list li.peer"));
  if (rows.length === 0) return;
  const open = state.selected;
  const at = rows.findIndex((r) => r.dataset.peerId === open);
  const next = at < 0 ? (step > 0 ? 0 : rows.length - 1) : Math.min(Math.max(at + step, 0), rows.length - 1);
  const peerId = rows[next].dataset.peerId;
  if (peerId !== open) select(peerId);
}

function mainShown() {
  return !document.getElementById("app").hidden;
}

/** What the keys of shortcuts.js do. */
let attachAction = () => false;

const SHORTCUT_ACTIONS = {
  attach: () => mainShown() && (currentGroup() !== null ? (attachToGroup(), true)
    : currentPeer() !== null && (attachAction(), true)),
  searchConversation: () => mainShown() && openSearch(currentGroup() !== null
    ? { groupId: currentGroup(), name: (groupById(currentGroup()) || { name: "this group" }).name }
    : currentPeer()),
  searchAll: () => mainShown() && openSearch(null),
  previousConversation: () => mainShown() && selectNeighbour(-1),
  nextConversation: () => mainShown() && selectNeighbour(1),
  focusComposer: () => mainShown() && (currentGroup() !== null ? focusGroupComposer() : focusComposer()),
  markRead: () => mainShown() && (currentGroup() !== null ? markGroupRead() : markCurrentRead()),
  newGroup: () => mainShown() && openNewGroup(),
  groupMembers: () => mainShown() && openMembers(),
  settings: () => mainShown() && openSettings(),
  help: () => mainShown() && toggleHelp(),
  focusMessages: () => mainShown() && (groupShortcuts.focusMessages() || messageShortcuts.focusMessages()),
  reply: () => mainShown() && (groupShortcuts.reply() || messageShortcuts.reply()),
  edit: () => mainShown() && (groupShortcuts.edit() || messageShortcuts.edit()),
  react: () => mainShown() && (groupShortcuts.react() || messageShortcuts.react()),
  deleteMessage: () => mainShown() && (groupShortcuts.deleteMessage() || messageShortcuts.deleteMessage()),
};

function renderMe(me) {
  if (!me) return;
  document.getElementById("me-name").textContent = me.clientId;
  const avatar = document.getElementById("me-avatar");
  avatar.replaceChildren();
  paintAvatar(avatar, me.clientId, false);
}

/** The last bootstrap answer (the removed screen's *Keep reading* draws the window from it). */
let lastBoot = null;

function showApp(boot) {
  lastBoot = boot;
  set("settings", boot.settings);
  set("me", boot.me);
  set("dataDir", boot.dataDir);
  set("connection", boot.connection);
  set("peers", boot.peers);
  set("groups", boot.groups || []);
  document.getElementById("welcome").hidden = true;
  document.getElementById("app").hidden = false;
  for (const q of boot.questions) onQuestion(q);
}

async function start() {
  initPeerList(select);
  initConversation();
  initGroups(select);
  initQuestionDialog();
  initSettings();
  initStatusBar();
  initVerify();
  initSearch(select);
  initHelp();
  initLinkDialog();
  initBackup();
  document.getElementById("conv-export").addEventListener("click", () => {
    const peer = currentPeer();
    if (peer) openConversationExport(peer);
  });
  initMessageActions();
  attachAction = initFiles(currentPeer, upsertMessage, dropOnGroup);
  document.getElementById("open-search").addEventListener("click", () => openSearch(null));
  document.getElementById("conv-search").addEventListener("click", () => openSearch(currentPeer()));
  document.getElementById("open-help").addEventListener("click", toggleHelp);
  initShortcuts(SHORTCUT_ACTIONS, () => !!document.querySelector("dialog[open]"));

  subscribeState();
  // Events first, so nothing that happens during bootstrap is missed; the bootstrap answer
  // then replaces whatever arrived before it.
  await Promise.all([
    on(events.PEER_LIST, (peers) => set("peers", peers)),
    on(events.MESSAGE, (m) => {
      upsertMessage(m);
      announceMessage(m);
    }),
    on(events.SERVER_QUESTION, onQuestion),
    on(events.QUESTION_CLOSED, onQuestionClosed),
    on(events.CONNECTION_STATE, (c) => set("connection", c)),
    on(events.ERROR, showNotice),
    on(events.TYPING, onTyping),
    on(events.MESSAGE_REMOVED, removeMessage),
    on(events.TRANSFER, onTransfer),
    on(events.GROUP_LIST, (groups) => set("groups", groups)),
    on(events.GROUP_MESSAGE, upsertGroupLine),
    initDevices(),
    on(events.DEVICE_REMOVED, (me) => {
      set("me", me);
      showRemoved(me, state.dataDir, () => { document.getElementById("app").hidden = false; markReadOnly(me); });
    }),
  ]);

  let boot;
  try {
    boot = await api.bootstrap();
  } catch (err) {
    showNotice(err);
    return;
  }
  lastBoot = boot;
  if (boot.needsSetup) {
    showFirstRun(boot, showApp);
  } else if (boot.me && boot.me.removedAt) {
    set("dataDir", boot.dataDir);
    showRemoved(boot.me, boot.dataDir, () => { showApp(boot); markReadOnly(boot.me); });
  } else {
    showApp(boot);
  }
  document.body.dataset.ready = "true";
}

function subscribeState() {
  subscribe("peers", () => {
    renderPeers();
    refreshConversationPeer();
    refreshVerify();
  });
  subscribe("groups", () => {
    renderPeers();
    refreshGroup();
  });
  subscribe("connection", renderConnection);
  subscribe("me", renderMe);
}

start().catch((err) => showNotice({ kind: ErrorKind.INTERNAL, message: String(err) }));
