// torchclip serve: the page's behaviour. Everything from the server is inserted with textContent or as
// attributes of created elements, never as HTML, so ids and texts from the collection cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
let info = { max_upload_bytes: 8 << 20, upload_types: [] };

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `request failed (${response.status})`);
  }
  return body;
}

function renderResults(results, title) {
  const list = $("results");
  list.replaceChildren();
  $("results-title").hidden = false;
  $("results-title").textContent = title;
  for (const r of results) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.row = String(r.row);
    if (r.thumb) {
      const img = document.createElement("img");
      img.src = r.thumb;
      img.alt = r.id;
      img.loading = "lazy";
      img.title = "show similar items";
      img.addEventListener("click", () => similar(r.row, r.id));
      li.append(img);
    }
    if (r.text) {
      const p = document.createElement("p");
      p.className = "text";
      p.textContent = r.text;
      li.append(p);
    }
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = r.id;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${r.score.toFixed(3)}`;
    li.append(id, score);
    list.append(li);
  }
}

function renderLabels(labels) {
  const list = $("labels");
  list.replaceChildren();
  if (!labels || labels.length === 0) {
    const li = document.createElement("li");
    li.textContent = "no label set (index with --labels, or serve with --labels)";
    list.append(li);
    return;
  }
  for (const l of labels) {
    const li = document.createElement("li");
    li.className = "label";
    li.textContent = `${l.label} — ${(100 * l.prob).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, Math.round(120 * l.prob))}px`;
    li.append(bar);
    list.append(li);
  }
}

async function search(event) {
  event.preventDefault();
  const q = $("query").value.trim();
  if (!q) return;
  setStatus("searching…");
  try {
    const body = await api(`/api/search?q=${encodeURIComponent(q)}&k=12`);
    $("query-panel").hidden = true;
    renderResults(body.results, `Results for “${q}”`);
    setStatus(`${body.results.length} results`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function similar(row, id) {
  setStatus("finding similar items…");
  try {
    const body = await api(`/api/similar?row=${row}&k=12`);
    $("query-panel").hidden = false;
    $("query-preview").src = `/thumb/${row}`;
    renderLabels(body.labels);
    renderResults(body.results, `Items similar to ${id}`);
    setStatus(`${body.results.length} neighbours`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  if (file.size > info.max_upload_bytes) {
    setStatus(`${file.name} is larger than the ${(info.max_upload_bytes / 1048576).toFixed(1)} MB limit`, true);
    return;
  }
  setStatus(`uploading ${file.name}…`);
  try {
    const body = await api("/api/upload?k=12", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    $("query-panel").hidden = false;
    $("query-preview").src = URL.createObjectURL(file);
    renderLabels(body.labels);
    renderResults(body.results, `Neighbours of ${file.name}`);
    setStatus(`${body.results.length} neighbours of ${file.name} (${body.width}×${body.height})`);
  } catch (e) {
    $("query-panel").hidden = true;
    setStatus(e.message, true);
  }
}

async function start() {
  $("search-form").addEventListener("submit", search);
  $("upload").addEventListener("change", upload);
  try {
    info = await api("/api/info");
    const labels = info.labels.length ? `, ${info.labels.length} zero-shot labels` : "";
    $("info").textContent = `${info.count} items (${info.kind} index, model ${info.model || "unknown"}${labels})`;
  } catch (e) {
    setStatus(e.message, true);
  }
}

start();
