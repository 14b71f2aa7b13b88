// save-search web page: search, play from the matching moment, upload with live job progress.
// Plain DOM code, no framework. Server text is only ever put into the page with textContent.
"use strict";

const $ = (id) => document.getElementById(id);

const MODE_TEXT = {
  "save-fused": "SAVE mode: searching what is seen, heard and said",
  "zero-shot-clip": "zero-shot CLIP mode: visual search without the trained fusion, plus transcripts",
  "speech": "speech mode: visual model unavailable — searching transcripts",
};

// The search being shown: its query and the token of the next page (null when there is none).
const view = { q: "", nextToken: null, seq: 0 };
const HINT = "Type what you are looking for: something seen, or words that are said.";

// ---------- helpers ----------

// fetch + JSON, turning every failure into an Error whose message a person can read
// (the API puts the reason of an error in `detail`).
// The optional API key (servers with keys configured need one for writes, maybe for reads).
const KEY_STORAGE = "save-search-api-key";
function authHeaders() {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(url, options) {
  let response;
  const opts = Object.assign({}, options);
  opts.headers = Object.assign({}, opts.headers, authHeaders());
  try {
    response = await fetch(url, opts);
  } catch (err) {
    throw new Error("Could not reach the server (" + err.message + ")");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(errorText(response.status, response.statusText, body));
  return body;
}

function errorText(status, statusText, body) {
  let detail = body && body.detail;
  if (detail && typeof detail !== "string") detail = JSON.stringify(detail);
  return (detail || statusText || "request failed") + " (HTTP " + status + ")";
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function show(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

function formatTime(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return (h ? h + ":" : "") + mm + ":" + String(r).padStart(2, "0");
}

function formatBytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + "\u00a0" + units[i]; // no line break inside "1.2 MB"
}

const score = (x) => (x === null || x === undefined ? null : Number(x).toFixed(2));

// Text with the highlighted spans wrapped in <mark>. The spans are character offsets from Python, i.e. code
// points, so the text is split into code points (Array.from) rather than indexed as UTF-16.
function highlighted(text, spans) {
  const chars = Array.from(text || "");
  const frag = document.createDocumentFragment();
  const sorted = (spans || []).map(([s, e]) => [Math.max(0, s), Math.min(chars.length, e)])
    .filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [s, e] of sorted) {
    if (s < at) continue; // overlapping span: the earlier one already covers it
    if (s > at) frag.append(chars.slice(at, s).join(""));
    frag.append(el("mark", null, chars.slice(s, e).join("")));
    at = e;
  }
  if (at < chars.length) frag.append(chars.slice(at).join(""));
  return frag;
}

// ---------- model mode ----------

async function loadMode() {
  try {
    const ready = await api("/readyz");
    const label = MODE_TEXT[ready.mode] || ready.mode + " mode";
    const count = ready.videos + (ready.videos === 1 ? " video" : " videos") + " indexed";
    const queue = ready.queue_depth ? ", " + ready.queue_depth + " waiting" : "";
    $("mode-text").textContent = label + " · " + count + queue;
    $("mode").dataset.mode = ready.mode;
    $("mode-reason").textContent = ready.reason || "";
    $("mode-details").hidden = !ready.reason || ready.mode === "save-fused";
  } catch (err) {
    $("mode-text").textContent = "Model status unknown: " + err.message;
    $("mode").dataset.mode = "unknown";
  }
}

// ---------- search ----------

function queryFromUrl() {
  return new URLSearchParams(location.search).get("q") || "";
}

// Runs a search and shows page one. `push` adds a history entry so results are linkable and Back works.
async function search(q, push) {
  q = q.trim();
  if (push && q !== queryFromUrl()) {
    history.pushState({ q }, "", q ? "?q=" + encodeURIComponent(q) : location.pathname);
  }
  document.title = q ? q + " – save-search" : "save-search";
  view.q = q;
  view.nextToken = null;
  $("results").replaceChildren();
  $("more").hidden = true;
  show($("search-error"), "");
  if (!q) {
    $("results-heading").textContent = "Search results";
    $("search-status").textContent = HINT;
    return;
  }
  $("results-heading").textContent = "Results for “" + q + "”";
  await loadPage();
}

async function loadPage() {
  const seq = ++view.seq; // a newer search makes the answers of older ones stale
  const params = new URLSearchParams({ q: view.q, k: "10" });
  if (view.nextToken) params.set("page_token", view.nextToken);
  $("search-status").textContent = "Searching…";
  $("more").disabled = true;
  try {
    const page = await api("/v1/search?" + params);
    if (seq !== view.seq) return;
    for (const result of page.results) $("results").append(resultCard(result));
    view.nextToken = page.next_page_token;
    const n = $("results").children.length;
    $("search-status").textContent = n ? n + (n === 1 ? " video" : " videos") + (view.nextToken ? " so far" : "")
      : "No video matches this search.";
  } catch (err) {
    if (seq !== view.seq) return;
    $("search-status").textContent = "";
    show($("search-error"), "Search failed: " + err.message);
  } finally {
    if (seq === view.seq) {
      $("more").hidden = !view.nextToken;
      $("more").disabled = false;
    }
  }
}

function resultCard(r) {
  const li = el("li", "card");
  li.dataset.videoId = r.video_id;
  const seg = r.segment;
  const start = seg ? seg.start : 0;

  // Thumbnail: a button, so the card is keyboard usable; a placeholder replaces it when there is none (404).
  const thumb = el("button", "thumb");
  thumb.type = "button";
  thumb.setAttribute("aria-label", "Play " + r.filename + (seg ? " from " + formatTime(start) : ""));
  const img = el("img");
  img.alt = "";
  img.loading = "lazy";
  img.addEventListener("error", () => {
    img.remove();
    thumb.append(el("span", "thumb-missing", "no preview"));
  }, { once: true });
  img.src = r.thumbnail_url;
  thumb.append(img, el("span", "duration", formatTime(r.duration)));
  thumb.addEventListener("click", () => openPlayer(r, start));

  const body = el("div", "card-body");
  body.append(el("h3", "filename", r.filename));

  const meta = el("p", "meta");
  const parts = [];
  if (score(r.visual_score) !== null) parts.push("visual " + score(r.visual_score));
  if (score(r.speech_score) !== null) parts.push("speech " + score(r.speech_score));
  if (score(r.screen_score) !== null) parts.push("on screen " + score(r.screen_score));
  meta.append(el("span", "score", "score " + score(r.score)));
  if (parts.length) meta.append(el("span", "parts", "(" + parts.join(", ") + ")"));
  meta.append(el("span", null, formatTime(r.duration)));
  if (r.language) meta.append(el("span", null, r.language));
  body.append(meta);

  if (seg) {
    // The best matching moment (said, or shown on screen): clicking it plays from there.
    body.append(momentButton(r, seg, "moment"));
    // The other places that match (moments[0] is the best one, shown above), best first, each playable.
    const others = (r.moments || []).slice(1);
    if (others.length) {
      const list = el("ol", "more-moments");
      list.setAttribute("aria-label", "Also matches at");
      for (const m of others) {
        const item = el("li");
        item.append(momentButton(r, m, "other-moment"));
        list.append(item);
      }
      body.append(list);
    }
    // The rest of what is said, for context (clamped to two lines by the CSS).
    if (r.transcript && r.transcript.trim() !== seg.text.trim()) {
      body.append(el("p", "transcript-preview", r.transcript));
    }
  } else if (r.transcript) {
    body.append(el("p", "transcript-preview", r.transcript));
  } else {
    body.append(el("p", "muted", "No speech."));
  }
  li.append(thumb, body);
  return li;
}

// A moment (said, or shown on screen) as a button that plays the video from its start.
function momentButton(r, m, className) {
  const onScreen = m.source === "screen";
  const button = el("button", onScreen ? className + " on-screen" : className);
  button.type = "button";
  button.dataset.start = m.start;
  const range = formatTime(m.start) + "–" + formatTime(m.end);
  button.setAttribute("aria-label", "Play from " + formatTime(m.start) + (onScreen ? ", shown on screen: " : ": ")
    + m.text);
  button.append(el("span", "range", onScreen ? "on screen, " + range : range));
  const text = el("span", "moment-text");
  text.append(highlighted(m.text, m.highlights));
  button.append(text);
  if (className !== "moment" && score(m.score) !== null) button.append(el("span", "moment-score", score(m.score)));
  button.addEventListener("click", () => openPlayer(r, m.start));
  return button;
}

// ---------- player ----------

let playerSeq = 0;

function openPlayer(r, start) {
  const dialog = $("player"), video = $("video");
  const seq = ++playerSeq;
  $("player-title").textContent = r.filename;
  show($("player-error"), "");
  const url = new URL(r.video_url, location.href).href;
  if (!dialog.open) dialog.showModal();
  // Seeking needs the metadata; when the same file is already loaded it is there and no event will come.
  // A player closed before the metadata arrived must stay silent: the check on dialog.open keeps it paused.
  const seekAndPlay = () => {
    if (seq !== playerSeq || !dialog.open) return;
    video.currentTime = start;
    video.play().catch(() => { /* autoplay refused: the controls are there */ });
  };
  if (video.src === url && video.readyState >= 1) {
    seekAndPlay();
  } else {
    video.addEventListener("loadedmetadata", seekAndPlay, { once: true });
    video.src = url;
  }
  loadTranscript(r.video_id, seq);
}

// Fills a list with segments (transcript or on-screen text) that play from their start when clicked.
function fillSegments(list, segments, label) {
  list.replaceChildren();
  for (const s of segments) {
    const item = el("li");
    const button = el("button", "segment");
    button.type = "button";
    button.dataset.start = s.start;
    button.dataset.end = s.end;
    button.append(el("span", "range", label(s)), el("span", null, s.text));
    button.addEventListener("click", () => {
      $("video").currentTime = s.start;
      $("video").play().catch(() => {});
    });
    item.append(button);
    list.append(item);
  }
}

async function loadTranscript(videoId, seq) {
  $("transcript").replaceChildren();
  $("screen-text").replaceChildren();
  $("screen-heading").hidden = true;
  $("transcript-status").textContent = "Loading the transcript…";
  try {
    const video = await api("/v1/videos/" + encodeURIComponent(videoId));
    if (seq !== playerSeq) return;
    fillSegments($("transcript"), video.segments, (s) => formatTime(s.start));
    const shown = video.screen_text || [];
    fillSegments($("screen-text"), shown, (s) => formatTime(s.start) + "–" + formatTime(s.end));
    $("screen-heading").hidden = !shown.length;
    $("transcript-status").textContent = video.segments.length ? "" : "This video has no transcript (no speech).";
    markCurrentSegment();
  } catch (err) {
    if (seq !== playerSeq) return;
    $("transcript-status").textContent = "";
    show($("player-error"), "Could not load the transcript: " + err.message);
  }
}

// Marks the transcript segment and on-screen text being played, so the text follows the video.
function markCurrentSegment() {
  const t = $("video").currentTime;
  for (const button of document.querySelectorAll("#transcript button.segment, #screen-text button.segment")) {
    const on = t >= Number(button.dataset.start) && t < Number(button.dataset.end);
    if (on) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

// ---------- upload ----------

let uploading = false;

function uploadFile(file) {
  const progress = $("upload-progress");
  uploading = true;
  $("upload-button").disabled = true;
  show($("upload-error"), "");
  $("job-line").textContent = "";
  progress.hidden = false;
  progress.value = 0;
  const report = (loaded, total) => {
    progress.value = total ? loaded / total : 0;
    const pct = total ? " (" + Math.round((100 * loaded) / total) + "%)" : "";
    $("upload-line").textContent = (loaded >= total ? "Uploaded " : "Uploading ") + file.name + ": "
      + formatBytes(loaded) + " of " + formatBytes(total) + pct;
  };
  report(0, file.size);

  // XMLHttpRequest rather than fetch: only it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/videos");
  xhr.responseType = "json";
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (e) => report(e.loaded, e.lengthComputable ? e.total : file.size));
  xhr.upload.addEventListener("load", () => report(file.size, file.size));
  xhr.addEventListener("load", () => {
    if (xhr.status === 202 || xhr.status === 200) {
      const accepted = xhr.response || {};
      if (accepted.duplicate && accepted.status === "done") {
        $("job-line").textContent = "Already indexed (video " + accepted.video_id + ").";
        return uploadFinished(true);
      }
      $("job-line").textContent = "Queued as job " + accepted.job_id + "…";
      pollJob(accepted.job_id, 0);
    } else {
      uploadFailed("Upload failed: " + errorText(xhr.status, xhr.statusText, xhr.response));
    }
  });
  xhr.addEventListener("error", () => uploadFailed("Upload failed: could not reach the server."));
  xhr.addEventListener("abort", () => uploadFailed("Upload cancelled."));
  const form = new FormData();
  form.append("file", file, file.name);
  xhr.send(form);
}

// Polls the job about once a second until it is done or failed; a few network hiccups are tolerated.
async function pollJob(jobId, failures) {
  let job;
  try {
    job = await api("/v1/jobs/" + encodeURIComponent(jobId));
  } catch (err) {
    if (failures >= 5) return uploadFailed("Lost track of job " + jobId + ": " + err.message);
    $("job-line").textContent = "Job " + jobId + ": no answer (" + err.message + "), retrying…";
    return setTimeout(() => pollJob(jobId, failures + 1), 2000);
  }
  const item = job.items[0] || {};
  const pct = Math.round(100 * (job.progress || 0)) + "%";
  let stage = item.stage && item.stage !== job.status ? " · " + item.stage : "";
  if (item.stage === "transcribe" && item.stage_progress != null) {
    stage += " " + Math.round(100 * item.stage_progress) + "% of the audio";  // long videos: where speech is
  }
  $("job-line").textContent = "Job " + jobId + ": " + job.status + stage + " · " + pct;
  $("upload-progress").value = job.progress || 0;
  if (job.status === "done") {
    $("job-line").textContent = "Job " + jobId + ": done · indexed as video " + item.video_id + ".";
    return uploadFinished(true);
  }
  if (job.status === "cancelled") return uploadFailed("The video was deleted before it was indexed.");
  if (job.status === "failed") {
    const why = item.error || "unknown reason";
    return uploadFailed("Indexing failed: " + why + (item.error_kind ? " (" + item.error_kind + ")" : ""));
  }
  setTimeout(() => pollJob(jobId, 0), 1000);
}

function uploadFailed(message) {
  show($("upload-error"), message);
  uploadFinished(false);
}

function uploadFinished(ok) {
  uploading = false;
  $("upload-button").disabled = false;
  $("upload-progress").hidden = !ok;
  if (ok) {
    $("upload-form").reset();
    // The new video may match what is on screen: run the current search again, without a history entry.
    if (view.q) search(view.q, false);
  }
  loadMode();
}

// ---------- wiring ----------

function init() {
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    if (keyInput.value.trim()) localStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    else localStorage.removeItem(KEY_STORAGE);
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    search($("q").value, true);
  });
  $("more").addEventListener("click", () => loadPage());

  // Back/forward: show the search of that history entry.
  window.addEventListener("popstate", () => {
    $("q").value = queryFromUrl();
    search($("q").value, false);
  });

  $("upload-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const file = $("file").files[0];
    if (file && !uploading) uploadFile(file);
  });

  const dialog = $("player"), video = $("video");
  $("player-close").addEventListener("click", () => dialog.close());
  // A seek-and-play still waiting for metadata checks dialog.open, so a closed player stays paused.
  dialog.addEventListener("close", () => video.pause());
  // A click on the backdrop (outside the dialog's box) closes it too.
  dialog.addEventListener("click", (e) => {
    if (e.target === dialog) {
      const box = dialog.getBoundingClientRect();
      const inside = e.clientX >= box.left && e.clientX <= box.right && e.clientY >= box.top && e.clientY <= box.bottom;
      if (!inside) dialog.close();
    }
  });
  video.addEventListener("timeupdate", markCurrentSegment);
  video.addEventListener("error", () => {
    const code = video.error ? video.error.code : 0;
    show($("player-error"), code === 4 ? "This browser cannot play this video file (format or codec)."
      : "The video could not be loaded.");
  });

  // "/" jumps to the search box from anywhere but a text field.
  document.addEventListener("keydown", (e) => {
    const typing = e.target.closest && e.target.closest("input, textarea, select, [contenteditable]");
    if (e.key === "/" && !typing && !dialog.open) {
      e.preventDefault();
      $("q").focus();
    }
  });

  $("q").value = queryFromUrl();
  history.replaceState({ q: $("q").value }, "", location.href);
  loadMode();
  search($("q").value, false);
}

init();
