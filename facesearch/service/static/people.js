// The people page: the faces of unlabelled photos grouped into people (rows of thumbnails, largest
// first); name a person, merge two, click a face out of its person or drag it into another; suggestions
// with their scores.
// Everything comes from this server's /v1 API; nothing is fetched from anywhere else.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { key: sessionStorage.getItem("facesearch-key") || "", answer: null };

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", "Bearer " + state.key);
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    options = { ...options, body: JSON.stringify(options.json) };
  }
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

function show(selector, message) {
  const box = $(selector);
  box.textContent = message || "";
  box.hidden = !message;
}

const thumbnails = new Map();
function thumbnail(id) {
  if (!thumbnails.has(id)) {
    thumbnails.set(id, api(`/v1/faces/${id}/thumbnail?size=96`)
      .then((r) => r.blob()).then((blob) => URL.createObjectURL(blob)).catch(() => null));
  }
  return thumbnails.get(id);
}

async function load(request = "/v1/people", options = {}) {
  try {
    state.answer = await (await api(request, options)).json();
    $("#key-form").hidden = true;
  } catch (e) {
    show("#error", e.message);
    return;
  }
  render();
}

function render() {
  const a = state.answer;
  const faces = a.people.reduce((n, p) => n + p.faces.length, 0);
  $("#stats").textContent = `${a.people.length} people · ${faces} faces grouped · ${a.unclustered.length} alone` +
    (a.threshold !== null ? ` · linking threshold ${a.threshold.toFixed(3)}` : "");
  const group = $("#group");
  group.hidden = a.pending === 0;
  group.textContent = `Group ${a.pending} new face${a.pending === 1 ? "" : "s"}`;
  $("#summary").textContent = a.people.length || a.unclustered.length ? ""
    : "No faces of unlabelled photos yet: facesearch build-index PHOTOS --unlabeled adds some.";
  $("#people").replaceChildren(...a.people.map(personItem));
  const alone = $("#alone");
  alone.hidden = a.unclustered.length === 0;
  $(".person-faces", alone).replaceChildren(...a.unclustered.map((f) => faceItem(f, null)));
}

function personItem(person) {
  const item = $("#person-template").content.firstElementChild.cloneNode(true);
  item.dataset.person = person.person;
  $(".person-id", item).textContent = person.person;
  const name = $(".person-name", item);
  name.textContent = person.name || "";
  name.className = "person-name" + (person.name ? " named" : "");
  $(".count", item).textContent = `${person.faces.length} face${person.faces.length === 1 ? "" : "s"}`;
  const offered = $(".suggestion", item);
  if (person.suggestion) {
    offered.textContent = `looks like ${person.suggestion.identity} (score ${person.suggestion.score.toFixed(3)})`;
  }
  $(".person-faces", item).replaceChildren(...person.faces.map((f) => faceItem(f, person.person)));
  // A face dragged here from another person (or from the faces alone) moves into this person.
  item.addEventListener("dragover", (e) => { e.preventDefault(); item.classList.add("over"); });
  item.addEventListener("dragleave", () => item.classList.remove("over"));
  item.addEventListener("drop", (e) => {
    e.preventDefault();
    item.classList.remove("over");
    const id = e.dataTransfer.getData("text/plain");
    if (!id || person.faces.some((f) => String(f.id) === id)) return;
    change(`/v1/people/faces/${id}/move`, { to: person.person }, (c) => `face ${id} moved into ${c.person}`);
  });
  const nameForm = $(".name-form", item);
  if (person.suggestion && !person.name) nameForm.elements.name.value = person.suggestion.identity;
  if (person.name) nameForm.elements.name.value = person.name;
  nameForm.addEventListener("submit", (e) => {
    e.preventDefault();
    change(`/v1/people/${person.person}/name`, { name: nameForm.elements.name.value.trim() },
           (c) => `${c.person} is now ${c.name} (${c.faces} faces)`);
  });
  const mergeForm = $(".merge-form", item);
  const others = state.answer.people.filter((p) => p.person !== person.person);
  mergeForm.elements.other.replaceChildren(...others.map((p) => {
    const option = document.createElement("option");
    option.value = p.person;
    option.textContent = p.person + (p.name ? ` (${p.name})` : "");
    return option;
  }));
  mergeForm.hidden = others.length === 0;
  mergeForm.addEventListener("submit", (e) => {
    e.preventDefault();
    change(`/v1/people/${person.person}/merge`, { other: mergeForm.elements.other.value },
           (c) => `${c.joined} merged into ${c.person} (${c.faces} faces)`);
  });
  return item;
}

function faceItem(face, person) {
  const li = document.createElement("li");
  li.dataset.face = String(face.id);
  li.draggable = true;
  li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(face.id)));
  const img = document.createElement("img");
  img.alt = `face ${face.face} of ${face.path}`;
  img.title = `${face.path} · face ${face.face} · id ${face.id}`;
  thumbnail(face.id).then((url) => { if (url) img.src = url; });
  li.append(img);
  if (person !== null) {
    const out = document.createElement("button");
    out.type = "button";
    out.className = "out";
    out.title = `move this face out of ${person}`;
    out.textContent = "×";
    out.addEventListener("click", () => change(`/v1/people/faces/${face.id}/move`, { to: null },
                                               (c) => `face ${face.id} moved out of ${c.joined}`));
    li.append(out);
  }
  return li;
}

async function change(path, body, describe) {
  show("#error", "");
  show("#notice", "");
  try {
    const answer = await (await api(path, { method: "POST", json: body })).json();
    show("#notice", describe(answer));
  } catch (e) {
    show("#error", e.message);
    return;
  }
  await load();
}

function setUp() {
  $("#group").addEventListener("click", () => load("/v1/people/group", { method: "POST", json: {} }));
  $("#recluster").addEventListener("click", () => load("/v1/people/group", { method: "POST", json: { recluster: true } }));
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("#key").value.trim();
    sessionStorage.setItem("facesearch-key", state.key);
    thumbnails.clear();
    load();
  });
  load();
}

setUp();
