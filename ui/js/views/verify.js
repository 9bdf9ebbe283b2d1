// Comparing safety numbers with a contact, and marking the contact verified.

import { api } from "../api.js";
import { ErrorKind } from "../contract.js";
import { state, peerById } from "../state.js";
import { paintFingerprint } from "../util.js";
import { clearNotices, showNotice } from "./toasts.js";

let peerId = null;
// The new key's safety number on screen: accepting pins exactly this one (the backend refuses
// any other key, e.g. one the server swapped in after the comparison).
let shown = null;
const $ = (id) => document.getElementById(id);

function render() {
  const peer = peerById(peerId);
  if (!peer) return;
  $("verify-title").textContent = `Safety number with ${peer.id}`;
  const theirs = peer.keyChanged ? peer.pendingFingerprint : peer.fingerprint;
  if (theirs) {
    $("verify-intro").textContent = peer.keyChanged
      ? `${peer.id} presents a new key. Compare its number with what ${peer.id} sees under "Your safety number" in their settings — in person or on a call — before accepting it.`
      : `Compare these numbers with what ${peer.id} sees in their settings, in person or on a call. If they match, no one is in the middle.`;
    $("verify-their-label").textContent = peer.keyChanged ? `${peer.id} (new key)` : peer.id;
    paintFingerprint($("verify-theirs"), theirs);
    if (peer.keyChanged && shown !== null && shown !== theirs) {
      $("verify-changed").textContent =
        `${peer.id}'s key changed again while this was open. Compare the new number before accepting it.`;
      $("verify-changed").hidden = false;
    }
  } else {
    $("verify-intro").textContent = `${peer.id} has not proven a signed identity yet (an original client, or no message exchanged). There is nothing to compare.`;
    $("verify-their-label").textContent = peer.id;
    $("verify-theirs").replaceChildren("—");
  }
  paintFingerprint($("verify-mine"), state.me ? state.me.fingerprint : "");
  const toggle = $("verify-toggle");
  toggle.hidden = !peer.fingerprint || peer.keyChanged;
  toggle.textContent = peer.verified ? "Clear verification" : "Mark as verified";
  toggle.className = peer.verified ? "button" : "button primary";
  shown = peer.keyChanged && theirs ? theirs : null;
  $("verify-accept").hidden = shown === null;
}

/** Opens the dialog for `id`. */
export function openVerify(id) {
  peerId = id;
  shown = null;
  $("verify-changed").hidden = true;
  render();
  const dialog = $("verify-dialog");
  if (!dialog.open) dialog.showModal();
}

/** The peer list changed: keep the dialog current. */
export function refreshVerify() {
  if ($("verify-dialog").open) render();
}

export function initVerify() {
  $("verify-close").addEventListener("click", () => $("verify-dialog").close());
  $("verify-accept").addEventListener("click", async () => {
    const peer = peerById(peerId);
    if (!peer || shown === null) return;
    try {
      await api.acceptKeyChange(peer.id, shown);
      clearNotices(ErrorKind.KEY_CHANGED);
      $("verify-dialog").close();
    } catch (err) {
      $("verify-changed").textContent = err.message;
      $("verify-changed").hidden = false;
    }
  });
  $("verify-toggle").addEventListener("click", async () => {
    const peer = peerById(peerId);
    if (!peer) return;
    try {
      await api.setVerified(peer.id, !peer.verified);
    } catch (err) {
      showNotice(err);
    }
  });
}
