// Entry point: asks the backend for everything it needs to draw, then listens for changes.

import { api, on, events } from "./api.js";
import { ErrorKind } from "./contract.js";
import { set, subscribe } from "./state.js";
import { paintAvatar } from "./util.js";
import { initPeerList, renderPeers } from "./views/peer-list.js";
import { initConversation, openConversation, refreshConversationPeer, upsertMessage } from "./views/conversation.js";
import { initQuestionDialog, onQuestion, onQuestionClosed } from "./views/question-dialog.js";
import { initSettings } from "./views/settings.js";
import { initStatusBar, renderConnection } from "./views/status-bar.js";
import { initVerify, refreshVerify } from "./views/verify.js";
import { showFirstRun } from "./views/first-run.js";
import { showNotice } from "./views/toasts.js";

function select(peerId) {
  set("selected", peerId);
  renderPeers();
  openConversation(peerId);
}

function renderMe(me) {
  if (!me) return;
  document.getElementById("me-name").textContent = me.clientId;
  const avatar = document.getElementById("me-avatar");
  avatar.replaceChildren();
  paintAvatar(avatar, me.clientId, false);
}

function showApp(boot) {
  set("settings", boot.settings);
  set("me", boot.me);
  set("dataDir", boot.dataDir);
  set("connection", boot.connection);
  set("peers", boot.peers);
  document.getElementById("welcome").hidden = true;
  document.getElementById("app").hidden = false;
  for (const q of boot.questions) onQuestion(q);
}

async function start() {
  initPeerList(select);
  initConversation();
  initQuestionDialog();
  initSettings();
  initStatusBar();
  initVerify();

  subscribeState();
  // Events first, so nothing that happens during bootstrap is missed; the bootstrap answer
  // then replaces whatever arrived before it.
  await Promise.all([
    on(events.PEER_LIST, (peers) => set("peers", peers)),
    on(events.MESSAGE, upsertMessage),
    on(events.SERVER_QUESTION, onQuestion),
    on(events.QUESTION_CLOSED, onQuestionClosed),
    on(events.CONNECTION_STATE, (c) => set("connection", c)),
    on(events.ERROR, showNotice),
  ]);

  let boot;
  try {
    boot = await api.bootstrap();
  } catch (err) {
    showNotice(err);
    return;
  }
  if (boot.needsSetup) {
    showFirstRun(boot, showApp);
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
  subscribe("connection", renderConnection);
  subscribe("me", renderMe);
}

start().catch((err) => showNotice({ kind: ErrorKind.INTERNAL, message: String(err) }));
