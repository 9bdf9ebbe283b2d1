// Message search: Ctrl+F in the open conversation, Ctrl+K in all of them. The backend searches
// the local history (SQLite FTS5) and answers newest first with snippets whose matches are
// marked; the page draws them as text with <mark>, never as HTML. Up/Down choose a result,
// Enter (or a click) opens its conversation at that message.

import { api } from "../api.js";
import { ErrorKind } from "../contract.js";
import { h, formatShort } from "../util.js";
import { groupKey } from "./groups.js";
import { showNotice } from "./toasts.js";

/** Wait after the last keystroke before searching (ms). */
const SEARCH_DELAY_MS = 120;
/** Results asked for per search. */
const RESULTS = 50;

let onOpen = () => {};
let scopePeer = null; // the conversation searched, or null for all
let hits = [];
let active = -1;
let generation = 0;
let timer = null;

const $ = (id) => document.getElementById(id);

/** Opens the search: in the conversation with `peerId` (or the group `{ groupId, name }`), or
 * in all when it is null. */
export function openSearch(peerId) {
  const dialog = $("search-dialog");
  scopePeer = peerId;
  const inConversation = $("search-scope-conversation");
  inConversation.disabled = peerId === null;
  $("search-scope-peer").textContent = peerId === null ? "This conversation"
    : typeof peerId === "string" ? `With ${peerId}` : `In ${peerId.name}`;
  inConversation.checked = peerId !== null;
  $("search-scope-all").checked = peerId === null;
  if (!dialog.open) dialog.showModal();
  const input = $("search-input");
  input.focus();
  input.select();
  if (input.value.trim()) run();
}

function scope() {
  return $("search-scope-conversation").checked ? scopePeer : null;
}

function setStatus(text) {
  $("search-status").textContent = text;
}

function renderSnippet(parts) {
  return parts.map((p) => (p.hit ? h("mark", {}, p.text) : p.text));
}

/** Who wrote a hit, and where: "You to bob", "bob", "bob in Climbing". */
function who(hit) {
  if (hit.groupId) return `${hit.outgoing ? "You" : hit.peerId} in ${hit.groupName}`;
  return hit.outgoing ? `You to ${hit.peerId}` : hit.peerId;
}

function render() {
  const list = $("search-results");
  list.replaceChildren(...hits.map((hit, i) => h("li", {
    id: `search-hit-${i}`,
    class: "search-hit",
    role: "option",
    "aria-selected": String(i === active),
    dataset: { peerId: hit.peerId, seq: String(hit.seq), groupId: hit.groupId || "" },
    onmousedown: (e) => e.preventDefault(), // keep the focus in the input
    onclick: () => open(i),
  },
  h("div", { class: "search-hit-top" },
    h("span", { class: "search-hit-who", text: who(hit) }),
    h("time", { class: "search-hit-time", text: formatShort(hit.at) })),
  h("bdi", { class: "search-hit-text", dir: "auto" }, renderSnippet(hit.snippet)))));
  const input = $("search-input");
  input.setAttribute("aria-expanded", String(hits.length > 0));
  if (active >= 0) {
    input.setAttribute("aria-activedescendant", `search-hit-${active}`);
    $(`search-hit-${active}`).scrollIntoView({ block: "nearest" });
  } else {
    input.removeAttribute("aria-activedescendant");
  }
}

async function run() {
  clearTimeout(timer);
  timer = null;
  const text = $("search-input").value;
  generation += 1;
  const gen = generation;
  if (!text.trim()) {
    hits = [];
    active = -1;
    render();
    setStatus("");
    return;
  }
  try {
    const found = await api.searchMessages(text, scope(), RESULTS);
    if (gen !== generation) return;
    hits = found.hits;
    active = hits.length ? 0 : -1;
    render();
    const where = scope() === null ? "in all conversations"
      : typeof scope() === "string" ? `with ${scope()}` : `in ${scope().name}`;
    setStatus(hits.length === 0
      ? `No messages ${where} match.`
      : `${hits.length}${found.hasMore ? "+" : ""} message${hits.length === 1 ? "" : "s"} ${where}. Up and Down choose, Enter opens.`);
  } catch (err) {
    if (gen !== generation) return;
    hits = [];
    active = -1;
    render();
    // A search that cannot run (too long, no words) says why, where the results would be.
    if (err.kind === ErrorKind.INVALID_INPUT) setStatus(err.message);
    else showNotice(err);
  }
}

function open(i) {
  const hit = hits[i];
  if (!hit) return;
  $("search-dialog").close();
  onOpen(hit.groupId ? groupKey(hit.groupId) : hit.peerId, hit.seq);
}

function move(delta) {
  if (hits.length === 0) return;
  active = (active + delta + hits.length) % hits.length;
  render();
}

/** Wires the dialog; `open(peerId, seq)` opens a conversation at a message. */
export function initSearch(openAt) {
  onOpen = openAt;
  const input = $("search-input");
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, SEARCH_DELAY_MS);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      // A search field would only clear itself on the first Escape: close, as everywhere.
      e.preventDefault();
      $("search-dialog").close();
    } else if (e.key === "ArrowDown") {
      e.preventDefault();
      move(1);
    } else if (e.key === "ArrowUp") {
      e.preventDefault();
      move(-1);
    } else if (e.key === "Enter" && !e.isComposing) {
      e.preventDefault();
      // Typed faster than the search delay: search now, then open the first result.
      if (timer !== null) run().then(() => open(Math.max(active, 0)));
      else open(Math.max(active, 0));
    }
  });
  for (const radio of document.querySelectorAll("input[name=searchScope]")) {
    radio.addEventListener("change", () => {
      run();
      input.focus();
    });
  }
  $("search-close").addEventListener("click", () => $("search-dialog").close());
}
