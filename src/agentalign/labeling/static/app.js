// The labelling page: asks the server (docs/labeling.md) for a question, shows its clips, sends
// the answer with the time it took, and asks again. No framework, no network but the server.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

const state = {
  mode: "pair",    // "pair" or "rank"
  n: 4,            // clips per ranking, 3..6
  question: null,  // the question shown: {id, kind, episodes, clips}
  order: [],       // ranking so far: episodes, best first
  shownAt: 0,      // performance.now() when the question appeared
  busy: false,     // a request is under way: ignore buttons and keys
};

// -- the server ---------------------------------------------------------------------------------

async function api(path, body) {
  const init = { headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error(`the server cannot be reached (${e.message})`);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail ?? response.statusText);
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

function showMessage(text, kind = "info") {
  const m = $("message");
  m.textContent = text;
  m.className = kind;
  m.hidden = !text;
}

async function refreshProgress() {
  const p = await api("/api/progress");
  $("progress").textContent = `${p.labeller}: ${p.answered} answered / ${p.asked} asked`;
  $("mean").textContent = p.answered ? `mean ${Number(p.mean_seconds).toFixed(1)} s per label` : "";
}

// -- questions ----------------------------------------------------------------------------------

async function nextQuestion() {
  state.busy = true;
  const query = state.mode === "pair" ? "mode=pair" : `mode=rank&n=${state.n}`;
  try {
    const q = await api(`/api/next?${query}`);
    if (q.id === null || q.id === undefined) {
      show(null);
      showMessage("No question left: thank you! Every clip you could be asked about has been labelled.", "done");
    } else {
      showMessage("");
      show(q);
    }
    await refreshProgress();
  } catch (e) {
    showMessage(`Could not get the next question: ${e.message}`, "error");
  } finally {
    state.busy = false;
  }
  const wanted = state.mode === "pair" ? "mode=pair" : `mode=rank&n=${state.n}`;
  if (wanted !== query) nextQuestion();  // the mode changed while we asked
}

function show(q) {
  state.question = q;
  state.order = [];
  const box = $("clips");
  box.replaceChildren();
  box.className = q ? q.kind : "";
  if (q) box.style.setProperty("--n", q.episodes.length);  // ranking clips shrink to share a row
  $("pair-controls").hidden = !q || q.kind !== "pair";
  $("rank-controls").hidden = !q || q.kind !== "rank";
  $("instructions").textContent = !q ? "" : q.kind === "pair"
    ? "Which of the two is better? (← left, → right, ↓ or T tie, S skip)"
    : `Click the clips in order, best first (or press 1–${q.episodes.length}), then submit.`;
  if (!q) return;
  q.episodes.forEach((episode, k) => {
    const fig = document.createElement("figure");
    fig.className = "clip";
    fig.dataset.episode = episode;
    const video = document.createElement("video");
    Object.assign(video, { src: q.clips[k], muted: true, loop: true, autoplay: true, playsInline: true });
    video.setAttribute("muted", "");
    video.addEventListener("error", () => showMessage(`Clip of episode ${episode} could not be loaded.`, "error"));
    const caption = document.createElement("figcaption");
    caption.textContent = q.kind === "pair" ? (k === 0 ? "left" : "right") : `${k + 1}`;
    const rank = document.createElement("span");
    rank.className = "rank";
    fig.append(video, caption, rank);
    if (q.kind === "rank") fig.addEventListener("click", () => pick(k));
    box.append(fig);
    video.play().catch(() => {});  // autoplay may be refused; the loop starts on the first click
  });
  updateRanking();
  state.shownAt = performance.now();
}

function seconds() {
  return Math.round((performance.now() - state.shownAt) / 100) / 10;
}

async function send(answer) {
  if (state.busy || !state.question) return;
  state.busy = true;
  try {
    await api("/api/answer", { id: state.question.id, ...answer, seconds: seconds() });
  } catch (e) {
    showMessage(`Your answer was not saved: ${e.message}`, "error");
    state.busy = false;
    return;
  }
  state.busy = false;
  await nextQuestion();
}

// -- ranking ------------------------------------------------------------------------------------

function pick(k) {
  const q = state.question;
  if (state.busy || !q || q.kind !== "rank") return;
  const episode = q.episodes[k];
  const at = state.order.indexOf(episode);
  if (at >= 0) {
    state.order.splice(at);  // clicking a ranked clip again takes it and those after it back
  } else {
    state.order.push(episode);
    if (state.order.length === q.episodes.length - 1) {  // the last one has no choice left
      state.order.push(q.episodes.find((e) => !state.order.includes(e)));
    }
  }
  updateRanking();
}

function updateRanking() {
  for (const fig of $("clips").children) {
    const at = state.order.indexOf(Number(fig.dataset.episode));
    fig.querySelector(".rank").textContent = at >= 0 ? ordinal(at + 1) : "";
    fig.classList.toggle("ranked", at >= 0);
  }
  const q = state.question;
  $("submit").disabled = !q || state.order.length !== q.episodes.length;
}

function ordinal(i) {
  return i === 1 ? "best" : `#${i}`;
}

function submitRanking() {
  const q = state.question;
  if (q && q.kind === "rank" && state.order.length === q.episodes.length) send({ order: state.order });
}

// -- controls -----------------------------------------------------------------------------------

for (const id of ["left", "right", "tie", "skip"]) {
  $(id).addEventListener("click", () => send({ choice: id }));
}
$("submit").addEventListener("click", submitRanking);
$("clear").addEventListener("click", () => { state.order = []; updateRanking(); });

function changeMode() {
  state.mode = $("mode-rank").checked ? "rank" : "pair";
  state.n = Number($("rank-n").value);
  document.activeElement.blur();  // else the arrow keys would move the radio buttons
  if (!state.busy) nextQuestion();  // else nextQuestion asks again when its answer is in
}
$("mode-pair").addEventListener("change", changeMode);
$("mode-rank").addEventListener("change", changeMode);
$("rank-n").addEventListener("change", () => { $("mode-rank").checked = true; changeMode(); });

const PAIR_KEYS = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "tie", t: "tie", T: "tie", s: "skip", S: "skip" };

document.addEventListener("keydown", (ev) => {
  if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.target instanceof HTMLSelectElement || ev.target instanceof HTMLInputElement) return;
  const q = state.question;
  if (!q) return;
  if (q.kind === "pair" && ev.key in PAIR_KEYS) {
    ev.preventDefault();
    send({ choice: PAIR_KEYS[ev.key] });
  } else if (q.kind === "rank") {
    const k = Number(ev.key) - 1;
    if (Number.isInteger(k) && k >= 0 && k < q.episodes.length) pick(k);
    else if (ev.key === "Enter") { ev.preventDefault(); submitRanking(); }
    else if (ev.key === "Escape" || ev.key === "Backspace") { state.order = []; updateRanking(); }
  }
});

setInterval(() => {
  $("timer").textContent = state.question ? `${seconds().toFixed(1)} s on this one` : "";
}, 200);

if (!token) {
  showMessage("No labeller token: open the link you were given (it ends in ?token=…).", "error");
  $("progress").textContent = "";
} else {
  nextQuestion();
}
