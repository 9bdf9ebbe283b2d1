// Questions from the server. One dialog per conversation: later rounds replace the question and
// the earlier rounds stay above it as a transcript. Questions of other conversations wait in a
// queue. Dismissing tells the backend, and the server lets the question expire.

import { api } from "../api.js";
import { QuestionKind } from "../contract.js";
import { h } from "../util.js";
import { showNotice } from "./toasts.js";

/** After an answer, how long to wait for a next round before closing the dialog. */
const NEXT_ROUND_WAIT_MS = 4000;

let active = null; // the question shown
let transcript = []; // [{text, answer}] of earlier rounds of the active conversation
const queue = [];
let closeTimer = null;

const $ = (id) => document.getElementById(id);
const dialog = () => $("question-dialog");

function sameConversation(a, b) {
  return a && b && a.conversationId && a.conversationId === b.conversationId;
}

function renderTranscript() {
  $("question-transcript").replaceChildren(...transcript.map((t) =>
    h("li", {}, h("span", { class: "t-q", text: t.text }), h("span", { class: "t-a", text: t.answer }))));
}

function answerControls(q) {
  const answer = $("question-answer");
  const actions = $("question-actions");
  actions.replaceChildren();
  if (q.kind === QuestionKind.CHOICE && q.options.length > 0) {
    answer.replaceChildren(h("div", { class: "choices" },
      q.options.map((o) => h("button", { class: "button", type: "button", dataset: { answer: o }, onclick: () => submit(o) }, o))));
  } else if (q.kind === QuestionKind.CONFIRM) {
    const yes = q.options[0] || "Yes";
    const no = q.options[1] || "No";
    // A confirm is answered with a boolean; the label only shows in the transcript.
    answer.replaceChildren(h("div", { class: "confirm" },
      h("button", { class: "button", type: "button", dataset: { answer: "no" }, onclick: () => submit(false, no) }, no),
      h("button", { class: "button primary", type: "button", dataset: { answer: "yes" }, onclick: () => submit(true, yes) }, yes)));
  } else {
    const input = h("textarea", { class: "answer", id: "question-input", rows: "3", placeholder: "Your answer", "aria-label": "Your answer" });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        submitText();
      }
    });
    answer.replaceChildren(input);
    actions.replaceChildren(h("button", { class: "button primary", type: "button", id: "question-send", onclick: submitText }, "Send answer"));
  }
}

function show(q) {
  clearTimeout(closeTimer);
  if (!sameConversation(active, q)) transcript = [];
  active = q;
  $("question-round").hidden = !q.round;
  $("question-round").textContent = q.round ? `Round ${q.round}` : "";
  $("question-text").textContent = q.text;
  $("question-error").hidden = true;
  $("question-waiting").hidden = true;
  $("question-answer").hidden = false;
  $("question-dismiss").hidden = false;
  renderTranscript();
  answerControls(q);
  if (!dialog().open) dialog().showModal();
  const input = $("question-input");
  if (input) input.focus();
}

function closeAndNext() {
  clearTimeout(closeTimer);
  active = null;
  transcript = [];
  dialog().close();
  const next = queue.shift();
  if (next) show(next);
}

async function submit(response, label = String(response)) {
  if (!active) return;
  const q = active;
  $("question-error").hidden = true;
  for (const b of $("question-answer").querySelectorAll("button, textarea")) b.disabled = true;
  try {
    await api.answerQuestion(q.questionId, response);
  } catch (err) {
    for (const b of $("question-answer").querySelectorAll("button, textarea")) b.disabled = false;
    $("question-error").textContent = err.message;
    $("question-error").hidden = false;
    return;
  }
  if (active !== q) {
    // The next round arrived while the answer was on its way (the server asks it as soon as it
    // has the answer): it is shown already; this round still belongs above it.
    if (sameConversation(active, q)) {
      transcript.push({ text: q.text, answer: label });
      renderTranscript();
    }
    return;
  }
  transcript.push({ text: q.text, answer: label });
  renderTranscript();
  $("question-text").textContent = "";
  $("question-answer").hidden = true;
  $("question-actions").replaceChildren();
  $("question-dismiss").hidden = true;
  $("question-waiting").hidden = false;
  active = { ...q, answered: true };
  closeTimer = setTimeout(closeAndNext, NEXT_ROUND_WAIT_MS);
}

function submitText() {
  const input = $("question-input");
  if (!input) return;
  const text = input.value.trim();
  if (text.length === 0) {
    input.focus();
    return;
  }
  submit(text);
}

async function dismiss() {
  const q = active;
  if (q && !q.answered) {
    try {
      await api.dismissQuestion(q.questionId);
    } catch (err) {
      showNotice(err);
    }
  }
  closeAndNext();
}

/** A question arrived (event or bootstrap). */
export function onQuestion(q) {
  if (!active || sameConversation(active, q) || active.answered) show(q);
  else queue.push(q);
}

/** The backend closed a question (too many were open): drop it from the queue. The one shown
 * stays: answering it tells the person it has expired. */
export function onQuestionClosed(questionId) {
  const i = queue.findIndex((q) => q.questionId === questionId);
  if (i >= 0) queue.splice(i, 1);
}

export function initQuestionDialog() {
  $("question-dismiss").addEventListener("click", dismiss);
  $("question-dismiss-x").addEventListener("click", dismiss);
  $("question-form").addEventListener("submit", (e) => e.preventDefault());
  dialog().addEventListener("cancel", (e) => {
    e.preventDefault();
    dismiss();
  });
}
