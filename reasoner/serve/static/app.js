// The reasoner web page: chat with thumbs, side-by-side compare, per-version stats.
// Plain JS, no dependencies. Every piece of model output or user text goes through textContent, never HTML:
// answers are streamed (server-sent events read from fetch) and their ``` code blocks are built as <pre><code>
// elements whose text is set as text.
"use strict";

const state = { messages: [], pair: null };
const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.status + " " + r.statusText);
  return data;
}

function status(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "ok";
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function newFeedbackKey() {
  return (crypto.randomUUID && crypto.randomUUID()) || String(Date.now()) + Math.random();
}

// --- answers: streamed, rendered with code blocks -------------------------------------------------------------
// The text between ``` fences (an unclosed one runs to the end, as while it streams) becomes a code block, `x`
// inline code, the rest stays text (white-space kept). Only DOM nodes with textContent: nothing is parsed as HTML.
const FENCE = /```(?:([\w+#.-]+)?[ \t]*\n)?([\s\S]*?)(?:```|$)/g;

function inline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(/`([^`\n]+)`/g)) {
    if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
    parent.appendChild(el("code", "inline", m[1]));
    last = m.index + m[0].length;
    if (text[last] === "\n") last += 1;  // the line break after a closing fence: the block ends the line
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}

function renderText(container, text) {
  container.replaceChildren();
  let last = 0;
  for (const m of text.matchAll(FENCE)) {
    if (m.index > last) inline(container.appendChild(el("span", "prose")), text.slice(last, m.index));
    const block = el("pre", "code");
    if (m[1]) block.appendChild(el("span", "lang", m[1]));
    block.appendChild(el("code", "", m[2].replace(/\n$/, "")));
    container.appendChild(block);
    last = m.index + m[0].length;
    if (text[last] === "\n") last += 1;  // the line break after a closing fence: the block ends the line
  }
  if (last < text.length) inline(container.appendChild(el("span", "prose")), text.slice(last));
}

// POST a chat request with stream: true; onText(index, textSoFar) at each delta. Resolves to
// { id, model, texts, finish } when the stream ends ([DONE]); the completion is stored by then.
async function streamChat(body, onText) {
  const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify({ ...body, stream: true }) });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || r.status + " " + r.statusText);
  }
  const out = { id: null, model: null, texts: [], finish: [] };
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the answer stream ended early");
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return out;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        out.id = chunk.id;
        out.model = chunk.model;
        for (const c of chunk.choices) {
          const piece = c.delta && c.delta.content;
          if (piece) {
            out.texts[c.index] = (out.texts[c.index] || "") + piece;
            onText(c.index, out.texts[c.index]);
          }
          if (c.finish_reason) out.finish[c.index] = c.finish_reason;
        }
      }
    }
  }
}

function pending(container, text) {
  container.replaceChildren(el("span", "pending", text));
}

async function feedback(body) {
  // one Idempotency-Key per click: a retried post counts once
  const r = await fetch("/v1/feedback", { method: "POST", headers: { ...headers(), "Idempotency-Key": newFeedbackKey() }, body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || String(r.status));
  status("Thanks, feedback saved (" + data.id + ")");
  return data;
}

// --- chat ------------------------------------------------------------------------------------------------
function addUser(text) {
  const m = el("div", "msg user");
  m.appendChild(el("div", "who", "you"));
  m.appendChild(el("pre", "text", text));
  $("messages").appendChild(m);
}

// An assistant message that fills as its answer streams: { text (its text element), done(ref, version) }.
function addAssistant() {
  const m = el("div", "msg assistant");
  const who = el("div", "who", "assistant ");
  const tag = el("span", "tag", "…");
  who.appendChild(tag);
  m.appendChild(who);
  const text = el("div", "text");
  pending(text, "thinking…");
  m.appendChild(text);
  $("messages").appendChild(m);
  m.scrollIntoView({ block: "end" });
  return {
    text,
    done(ref, version) {
      tag.textContent = version;
      addRating(m, ref);
    },
    remove() { m.remove(); },
  };
}

function addRating(m, ref) {
  const bar = el("div", "rate");
  const up = el("button", "thumb-up", "▲ good");
  const down = el("button", "thumb-down", "▼ bad");
  up.title = "good answer";
  down.title = "bad answer";
  const reason = el("select", "reason");
  for (const [v, label] of [["", "reason…"], ["correct", "correct"], ["helpful", "helpful"], ["wrong", "wrong"], ["unhelpful", "unhelpful"], ["unsafe", "unsafe"], ["other", "other"]]) {
    const o = el("option", "", label);
    o.value = v;
    reason.appendChild(o);
  }
  const comment = el("input", "comment");
  comment.placeholder = "comment (optional)";
  comment.maxLength = 10000;
  const rate = async (rating) => {
    try {
      const body = { response: ref, rating };
      if (reason.value) body.reason = reason.value;
      if (comment.value.trim()) body.comment = comment.value.trim();
      await feedback(body);
      up.disabled = down.disabled = true;
      (rating > 0 ? up : down).classList.add("picked");
    } catch (e) {
      status("Feedback not saved: " + e.message, true);
    }
  };
  up.addEventListener("click", () => rate(1));
  down.addEventListener("click", () => rate(-1));
  bar.append(up, down, reason, comment);
  m.appendChild(bar);
  m.scrollIntoView({ block: "end" });
}

async function sendChat(ev) {
  ev.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  state.messages.push({ role: "user", content: text });
  addUser(text);
  $("chat-send").disabled = true;
  const msg = addAssistant();
  try {
    const r = await streamChat({ model: "reasoner", messages: state.messages, max_tokens: 64 }, (_i, text) => renderText(msg.text, text));
    const answer = r.texts[0] || "";
    if (!answer) pending(msg.text, "(empty answer)");
    state.messages.push({ role: "assistant", content: answer });
    msg.done({ completion_id: r.id, choice: 0 }, r.model);
    $("version").textContent = r.model;
    status("");
  } catch (e) {
    state.messages.pop();
    msg.remove();
    status("No answer: " + e.message, true);
  } finally {
    $("chat-send").disabled = false;
  }
}

// --- compare ---------------------------------------------------------------------------------------------
async function sendCompare(ev) {
  ev.preventDefault();
  const text = $("compare-input").value.trim();
  if (!text) return;
  $("compare-send").disabled = true;
  state.pair = null;
  const sides = [$("answer-a"), $("answer-b")];
  for (const side of sides) pending(side, "generating…");
  $("compare-pair").hidden = false;
  $("compare-choices").hidden = true;
  status("Generating two answers…");
  try {
    const r = await streamChat({ model: "reasoner", messages: [{ role: "user", content: text }], n: 2, max_tokens: 64 },
      (i, soFar) => renderText(sides[i], soFar));
    sides.forEach((side, i) => { if (!r.texts[i]) pending(side, "(empty answer)"); });
    state.pair = [0, 1].map((i) => ({ completion_id: r.id, choice: i }));
    $("compare-choices").hidden = false;
    for (const b of $("compare-choices").querySelectorAll("button")) b.disabled = false;
    status("");
  } catch (e) {
    $("compare-pair").hidden = true;
    status("No answers: " + e.message, true);
  } finally {
    $("compare-send").disabled = false;
  }
}

async function choose(kind) {
  if (!state.pair) return;
  const [a, b] = state.pair;
  const body = kind === "a" ? { chosen: a, rejected: b }
    : kind === "b" ? { chosen: b, rejected: a }
    : { responses: [a, b], tie: true, both_bad: kind === "bad" };
  try {
    await feedback(body);
    for (const btn of $("compare-choices").querySelectorAll("button")) btn.disabled = true;
  } catch (e) {
    status("Feedback not saved: " + e.message, true);
  }
}

// --- stats -----------------------------------------------------------------------------------------------
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");

async function loadStats() {
  try {
    const s = await api("/v1/stats");
    const body = $("stats-table").querySelector("tbody");
    body.replaceChildren();
    for (const v of s.versions) {
      const tr = el("tr");
      const cells = [v.version + (v.version === s.deployed ? " (deployed)" : ""), v.served, v.up, v.down, pct(v.thumbs_up_rate),
        v.wins + " / " + v.losses + " / " + v.ties, pct(v.win_rate), v.rating === null ? "–" : v.rating.toFixed(0) + " [" + v.rating_ci95[0].toFixed(0) + ", " + v.rating_ci95[1].toFixed(0) + "]"];
      for (const c of cells) tr.appendChild(el("td", "", String(c)));
      body.appendChild(tr);
    }
    status(s.feedback_rows + " feedback rows, " + s.comparisons + " cross-version comparisons");
  } catch (e) {
    status("No stats: " + e.message, true);
  }
}

// --- wiring ----------------------------------------------------------------------------------------------
function show(view) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.view === view);
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + view;
  if (view === "stats") loadStats();
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = localStorage.getItem("reasoner.apiKey") || "";
  key.addEventListener("change", () => localStorage.setItem("reasoner.apiKey", key.value.trim()));
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.view));
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("chat-clear").addEventListener("click", () => { state.messages = []; $("messages").replaceChildren(); status(""); });
  $("compare-form").addEventListener("submit", sendCompare);
  $("choose-a").addEventListener("click", () => choose("a"));
  $("choose-b").addEventListener("click", () => choose("b"));
  $("choose-tie").addEventListener("click", () => choose("tie"));
  $("choose-bad").addEventListener("click", () => choose("bad"));
  $("stats-refresh").addEventListener("click", loadStats);
  fetch("/health").then((r) => r.json()).then((h) => { $("version").textContent = h.version; }).catch(() => {});
});
