// The facesearch page: drop a photo, see every face boxed with its matches, enrol a face under a name.
// Everything comes from this server's /v1 API; nothing is fetched from anywhere else.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { file: null, answer: null, key: sessionStorage.getItem("facesearch-key") || "" };

// fetch() against the API with the key (if any); resolves to the Response, throws Error(detail) on failure.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", "Bearer " + state.key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("#key-form").hidden = false;
    throw new Error("this server needs an API key: type it above");
  }
  if (!response.ok) {
    let detail = response.status + " " + response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function showNotice(message) {
  const box = $("#notice");
  box.textContent = message || "";
  box.hidden = !message;
}

async function loadStats() {
  try {
    const s = await (await api("/v1/stats")).json();
    $("#stats").textContent = `${s.faces} faces of ${s.identities} identities · model ${s.model} · ` +
      `threshold ${s.threshold.toFixed(3)} (${s.threshold_source.split(" (")[0]})`;
    $("#key-form").hidden = true;  // the API answered: no key needed, or the one given works
  } catch (e) {
    $("#stats").textContent = e.message;
  }
}

async function search(file) {
  state.file = file;
  showError("");
  showNotice("");
  const img = $("#photo");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  $("#result").hidden = false;
  $("#boxes").replaceChildren();
  $("#faces").replaceChildren();
  const form = new FormData();
  form.append("photo", file, file.name);
  try {
    state.answer = await (await api("/v1/query?k=5", { method: "POST", body: form })).json();
  } catch (e) {
    state.answer = null;
    showError(e.message);
    return;
  }
  if (img.complete) render(); else img.onload = render;
}

function render() {
  const answer = state.answer;
  if (!answer) return;
  drawBoxes(answer);
  $("#faces").replaceChildren(...answer.faces.map((face, i) => faceItem(face, i)));
}

function drawBoxes(answer) {
  const img = $("#photo");
  const scale = img.clientWidth / (img.naturalWidth || 1);
  // Each box carries the face's number in the list beside the photo ("Face 2:"), then its verdict.
  const numbered = answer.faces.map((face, i) => [face, i + 1]).filter(([face]) => face.box);
  $("#boxes").replaceChildren(...numbered.map(([face, number]) => {
    const [x1, y1, x2, y2] = face.box;
    const box = document.createElement("div");
    box.className = "box" + (face.known ? " known" : "");
    Object.assign(box.style, { left: x1 * scale + "px", top: y1 * scale + "px",
                               width: (x2 - x1) * scale + "px", height: (y2 - y1) * scale + "px" });
    const label = document.createElement("span");
    label.className = "label";
    const num = document.createElement("b");
    num.className = "number";
    num.textContent = String(number);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = face.verdict;
    label.append(num, " ", name);
    box.append(label);
    return box;
  }));
}

function faceItem(face, index) {
  const item = $("#face-template").content.firstElementChild.cloneNode(true);
  $(".face-number", item).textContent = `Face ${index + 1}:`;
  const verdict = $(".verdict", item);
  verdict.textContent = face.verdict;
  verdict.classList.add(face.known ? "known" : "unknown");
  const best = face.matches[0];
  $(".best", item).textContent = best ? `best ${best.score.toFixed(3)} vs threshold ${face.threshold.toFixed(3)}`
                                      : "the gallery is empty";
  $(".matches", item).replaceChildren(...face.matches.map((m) => matchItem(m, face.threshold)));
  const form = $(".enrol", item);
  form.addEventListener("submit", (event) => { event.preventDefault(); enrol(form, index); });
  return item;
}

function matchItem(match, threshold) {
  const li = document.createElement("li");
  if (match.score >= threshold) li.className = "above";
  const img = document.createElement("img");
  img.alt = match.identity;
  thumbnail(match.id).then((url) => { if (url) img.src = url; });
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = match.identity;
  name.title = match.identity;
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = match.score.toFixed(3);
  li.append(img, name, score);
  return li;
}

const thumbnails = new Map();
function thumbnail(id) {
  if (!thumbnails.has(id)) {
    thumbnails.set(id, api(`/v1/faces/${id}/thumbnail?size=96`)
      .then((r) => r.blob()).then((blob) => URL.createObjectURL(blob)).catch(() => null));
  }
  return thumbnails.get(id);
}

async function enrol(form, faceIndex) {
  const status = $(".enrol-status", form);
  const identity = form.elements.identity.value.trim();
  status.className = "enrol-status";
  status.textContent = "enrolling...";
  const body = new FormData();
  body.append("photos", state.file, state.file.name);
  body.append("face", String(faceIndex));
  try {
    const answer = await (await api(`/v1/identities/${encodeURIComponent(identity)}/faces`,
                                    { method: "POST", body })).json();
    const face = answer.faces[0];
    await loadStats();
    await search(state.file);  // the answer now includes the new face
    showNotice(face.new ? `Face ${faceIndex + 1} enrolled as ${answer.identity} (face id ${face.id})`
                        : `Face ${faceIndex + 1} was already enrolled as ${answer.identity}`);
  } catch (e) {
    status.className = "enrol-status failed";
    status.textContent = e.message;
  }
}

function setUp() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => { if (e.target.files[0]) search(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) search(e.dataTransfer.files[0]);
  });
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("#key").value.trim();
    sessionStorage.setItem("facesearch-key", state.key);
    thumbnails.clear();
    loadStats();
    if (state.file) search(state.file);
  });
  window.addEventListener("resize", () => state.answer && drawBoxes(state.answer));
  loadStats();
}

setUp();
