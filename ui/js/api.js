// The page's only door to the backend: every command and event goes through here.
// Commands reject with {kind, message}; `message` is always a sentence fit to show.

const tauri = window.__TAURI__;

function normalizeError(err) {
  if (err && typeof err === "object" && typeof err.message === "string") {
    return { kind: err.kind || "internal", message: err.message };
  }
  if (typeof err === "string" && err.length > 0) {
    return { kind: "internal", message: err };
  }
  return { kind: "internal", message: "Something went wrong." };
}

async function call(command, args) {
  try {
    return await tauri.core.invoke(command, args);
  } catch (err) {
    throw normalizeError(err);
  }
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
  sendMessage: (peerId, text) => call("send_message", { peerId, text }),
  markRead: (peerId) => call("mark_read", { peerId }),
  answerQuestion: (questionId, response) => call("answer_question", { questionId, response }),
  dismissQuestion: (questionId) => call("dismiss_question", { questionId }),
  updateSettings: (patch) => call("update_settings", { patch }),
  acceptKeyChange: (peerId, fingerprint) => call("accept_key_change", { peerId, fingerprint }),
  setVerified: (peerId, verified) => call("set_verified", { peerId, verified }),
  reconnect: () => call("reconnect"),
  demoQuestion: () => call("demo_question"),
};

export const events = {
  PEER_LIST: "peer-list",
  MESSAGE: "message",
  SERVER_QUESTION: "server-question",
  QUESTION_CLOSED: "question-closed",
  CONNECTION_STATE: "connection-state",
  ERROR: "error",
};
