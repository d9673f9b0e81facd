// The batch server's web page: OpenAI's Files and Batches API of this same server, polled about
// once a second, plus the server's /metrics and /v1/vbatch/server for the server panel.
//
// Everything the server sends (ids, metadata, error messages) goes into the page as text
// (textContent), never as markup; the Content-Security-Policy forbids inline scripts besides.

const KEY_STORAGE = "vbatch.apiKey";
const PAGE_SIZE = 20;
const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
const METRICS_EVERY_POLLS = 2;
const ERROR_PREVIEW = 5;
const MAX_METADATA_PAIRS = 16;
const CANCELLABLE = new Set(["validating", "in_progress"]);
/** A batch's running time ends at the first of these that is set (none yet: now). */
const RUN_END_FIELDS = ["finalizing_at", "cancelled_at", "failed_at", "expired_at", "completed_at"];
const FINISHED_FIELDS = ["completed_at", "failed_at", "cancelled_at", "expired_at"];

const API_ROOT = new URL("../", document.baseURI); // the page is /ui/, the API beside it
const numbers = new Intl.NumberFormat();
const dateTimes = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) ?? "",
  facts: null,
  /** The `after` cursor of every page up to the one shown (null: the first page). */
  cursors: [null],
  /** Batch id → its table row and the batch it shows; rows are kept across polls, so focus and
   * buttons survive the updates. */
  rows: new Map(),
  /** Server clock minus this browser's, in seconds (from the responses' Date header). */
  clockOffset: null,
  detailId: null,
  detailErrorFile: null,
  polls: 0,
  timer: null,
  /** A poll is running; another asked for meanwhile runs right after it. */
  polling: false,
  pollAgain: false,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- the API ---------------------------------------------------------------------------------

async function call(path, options = {}) {
  const headers = new Headers(options.headers);
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), { ...options, headers, cache: "no-store" });
  } catch {
    throw new ApiError(0, "the server does not answer");
  }
  noteServerClock(response);
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

async function callJson(path, options) {
  return (await call(path, options)).json();
}

async function errorMessage(response) {
  try {
    const { error } = await response.json();
    const message = typeof error === "string" ? error : error?.message;
    if (message) return message;
  } catch {
    // not JSON: the status line says enough
  }
  return `${response.status} ${response.statusText}`.trim();
}

/** The Date header is whole seconds, so the server's time lies in [date, date + 1 s): the largest
 * offset seen is the closest estimate. */
function noteServerClock(response) {
  const date = Date.parse(response.headers.get("date") ?? "");
  if (Number.isNaN(date)) return;
  const offset = (date - Date.now()) / 1000;
  state.clockOffset = state.clockOffset === null ? offset : Math.max(state.clockOffset, offset);
}

function serverNow() {
  return Date.now() / 1000 + (state.clockOffset ?? 0);
}

// --- formatting ------------------------------------------------------------------------------

function count(value) {
  return numbers.format(value);
}

/** Rounded down (99.9 % is not done yet), with a no-break space before the sign. */
function percent(part, whole) {
  return `${Math.floor((100 * part) / whole)}\u00a0%`;
}

function duration(seconds) {
  const total = Math.max(0, Math.round(seconds));
  const [days, hours, minutes, secs] = [
    Math.floor(total / 86400),
    Math.floor(total / 3600) % 24,
    Math.floor(total / 60) % 60,
    total % 60,
  ];
  if (days) return `${days} d ${hours} h`;
  if (hours) return `${hours} h ${String(minutes).padStart(2, "0")} min`;
  if (minutes) return `${minutes} min ${String(secs).padStart(2, "0")} s`;
  return secs ? `${secs} s` : "under 1 s";
}

function bytes(size) {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${Number(size.toFixed(1))} ${units[unit]}`;
}

function when(epochSeconds) {
  return epochSeconds ? dateTimes.format(new Date(epochSeconds * 1000)) : "–";
}

function statusLabel(status) {
  return status.replaceAll("_", " ");
}

function capitalized(word) {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/** What a batch's numbers say: progress, tokens, speed and times (null where not known yet). */
function measure(batch) {
  const { total, completed, failed } = batch.request_counts;
  const done = completed + failed;
  const usage = batch.usage ?? {};
  const input = usage.input_tokens ?? 0;
  const cached = usage.input_tokens_details?.cached_tokens ?? 0;
  const output = usage.output_tokens ?? 0;
  const now = serverNow();
  const finishedAt = FINISHED_FIELDS.map((name) => batch[name]).find(Boolean);
  const started = batch.in_progress_at;
  const runEnd = RUN_END_FIELDS.map((name) => batch[name]).find(Boolean) ?? now;
  const running = started ? runEnd - started : null;
  let eta = null;
  if (batch.status === "in_progress" && done > 0 && total > done && now > started) {
    eta = (total - done) / (done / (now - started));
  }
  return {
    total,
    completed,
    failed,
    done,
    input,
    cached,
    output,
    tokensPerSecond: running > 0 ? output / running : null,
    elapsed: (finishedAt ?? now) - batch.created_at,
    finished: Boolean(finishedAt),
    eta,
  };
}

function progressText(figures) {
  const { done, total } = figures;
  if (total) return `${count(done)} / ${count(total)} (${percent(done, total)})`;
  return figures.finished ? "no requests" : "reading the file…";
}

function cachedText(figures) {
  const share = figures.input ? ` (${percent(figures.cached, figures.input)} hit)` : "";
  return `cached ${count(figures.cached)}${share}`;
}

function speedText(figures) {
  return figures.tokensPerSecond === null ? "–" : `${count(Math.round(figures.tokensPerSecond))} tok/s`;
}

function setText(root, selector, text) {
  root.querySelector(selector).textContent = text;
}

// --- the key ---------------------------------------------------------------------------------

function askForKey(message) {
  clearTimeout(state.timer);
  $("app").hidden = true;
  $("forget-key").hidden = true;
  $("key-panel").hidden = false;
  $("key-message").textContent = message;
  $("key-input").focus();
}

async function tryKey(event) {
  event.preventDefault();
  state.key = $("key-input").value.trim();
  try {
    const facts = await callJson("v1/vbatch/server");
    sessionStorage.setItem(KEY_STORAGE, state.key);
    $("key-input").value = "";
    $("key-panel").hidden = true;
    unlocked(facts);
  } catch (error) {
    state.key = "";
    $("key-message").textContent =
      error.status === 401
        ? "The server refused that key. Check it and try again."
        : `Cannot check the key: ${error.message}`;
    $("key-input").select();
  }
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = "";
  askForKey("The key is forgotten: enter it to see the batches again.");
}

function unlocked(facts) {
  $("app").hidden = false;
  $("forget-key").hidden = !state.key;
  showFacts(facts);
  poll();
}

// --- the server panel ------------------------------------------------------------------------

function showFacts(facts) {
  state.facts = facts;
  const models = facts.models.join(", ");
  document.title = `vbatch batches · ${models}`;
  $("server-model").textContent = models;
  $("server-profile").textContent = facts.profile;
  $("server-profile").title = facts.profile_description ?? "";
  $("server-versions").textContent = `vbatch ${facts.vbatch_version} · vLLM ${facts.vllm_version ?? "unknown"}`;
  const limits = facts.batches;
  const hours = limits.keep_outputs_hours;
  const kept = !hours ? "until deleted" : hours % 24 ? `${hours} h` : `${hours / 24} days`;
  $("batch-limits").textContent =
    `files up to ${bytes(limits.max_upload_bytes)} · outputs kept ${kept} · ` +
    `${Math.round(100 * limits.interactive_reserve)}\u00a0% left to single requests`;
  const select = $("endpoint");
  const endpoints = facts.batches.endpoints;
  if (select.options.length !== endpoints.length) {
    select.replaceChildren(...endpoints.map((endpoint) => new Option(endpoint, endpoint)));
  }
  $("start-batch").disabled = !endpoints.length;
  say("upload-message", endpoints.length ? "" : "The batch API has not started on this server (see its log).", true);
}

/** Prometheus text → metric name → every sample's value (one per label set). */
function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[2]);
    if (Number.isFinite(value)) samples.set(match[1], [...(samples.get(match[1]) ?? []), value]);
  }
  return samples;
}

function sum(values) {
  return values ? values.reduce((a, b) => a + b, 0) : null;
}

async function refreshServer() {
  if (!state.facts?.batches.endpoints.length) showFacts(await callJson("v1/vbatch/server"));
  const samples = parseMetrics(await (await call("metrics")).text());
  // Older vLLM names the KV cache's use gpu_cache_usage_perc; one sample per engine.
  const usage = samples.get("vllm:kv_cache_usage_perc") ?? samples.get("vllm:gpu_cache_usage_perc");
  const share = usage ? sum(usage) / usage.length : null;
  $("kv-meter").value = share ?? 0;
  $("kv-text").textContent = share === null ? "not reported" : `${(100 * share).toFixed(1)}\u00a0% in use`;
  const running = sum(samples.get("vllm:num_requests_running"));
  const waiting = sum(samples.get("vllm:num_requests_waiting"));
  $("server-requests").textContent =
    running === null ? "not reported" : `${count(running)} running · ${count(waiting ?? 0)} waiting`;
  const batchWaiting = sum(samples.get("vbatch_batch_requests_waiting"));
  $("batch-waiting").textContent = batchWaiting === null ? "not reported" : `${count(batchWaiting)} requests waiting`;
}

// --- polling ---------------------------------------------------------------------------------

async function poll() {
  clearTimeout(state.timer);
  if (state.polling) {
    state.pollAgain = true;
    return;
  }
  state.polling = true;
  try {
    await refreshBatches();
    if (state.polls++ % METRICS_EVERY_POLLS === 0) await refreshServer();
    if (state.detailId) await refreshDetail();
    $("connection").textContent = "";
  } catch (error) {
    if (error.status === 401) askForKey("The server refused the key: enter it again.");
    else $("connection").textContent = `Not updated: ${error.message}. Retrying…`;
  } finally {
    state.polling = false;
  }
  if ($("app").hidden) return; // locked: polling starts again with the key
  state.timer = setTimeout(poll, state.pollAgain ? 0 : document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  state.pollAgain = false;
}

// --- the batches list ------------------------------------------------------------------------

async function refreshBatches() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const after = state.cursors.at(-1);
  if (after) query.set("after", after);
  const page = await callJson(`v1/batches?${query}`);
  showBatches(page.data);
  $("older").disabled = !page.has_more;
  $("older").dataset.after = page.last_id ?? "";
  $("newer").disabled = state.cursors.length === 1;
  $("page-number").textContent = `Page ${state.cursors.length}`;
}

function showBatches(batches) {
  const body = $("batch-rows");
  const shown = new Set();
  let previous = null;
  for (const batch of batches) {
    const shownBefore = state.rows.get(batch.id);
    const row = shownBefore?.row ?? newRow(batch.id);
    state.rows.set(batch.id, { row, batch });
    updateRow(row, batch);
    if (shownBefore && shownBefore.batch.status !== batch.status) {
      $("announcer").textContent = `Batch ${batch.id} is ${statusLabel(batch.status)}.`;
    }
    const expected = previous ? previous.nextElementSibling : body.firstElementChild;
    if (row !== expected) body.insertBefore(row, expected); // moves rows only when the order changes
    previous = row;
    shown.add(batch.id);
  }
  for (const [id, { row }] of state.rows) {
    if (!shown.has(id)) {
      row.remove();
      state.rows.delete(id);
    }
  }
  $("no-batches").hidden = batches.length > 0 || state.cursors.length > 1;
}

function newRow(batchId) {
  const row = $("batch-row").content.firstElementChild.cloneNode(true);
  row.dataset.batchId = batchId;
  setText(row, ".batch-id", batchId);
  row.querySelector(".bar").setAttribute("aria-label", `Progress of ${batchId}`);
  const labels = {
    details: `Details of ${batchId}`,
    cancel: `Cancel ${batchId}`,
    output: `Download the output file of ${batchId}`,
    errors: `Download the error file of ${batchId}`,
  };
  for (const button of row.querySelectorAll("button[data-action]")) {
    button.setAttribute("aria-label", labels[button.dataset.action]);
  }
  return row;
}

function updateRow(row, batch) {
  const figures = measure(batch);
  row.classList.toggle("running", batch.status === "in_progress");
  setText(row, ".created", when(batch.created_at));
  setText(row, ".endpoint", batch.endpoint);
  const status = row.querySelector(".status");
  status.textContent = statusLabel(batch.status);
  status.className = `status status-${batch.status}`;

  const bar = row.querySelector(".bar");
  if (figures.total) {
    bar.max = figures.total;
    bar.value = figures.done;
  } else {
    bar.removeAttribute("value"); // indeterminate while the file is read
  }
  setText(row, ".progress-text", progressText(figures));
  setText(row, ".counts", `${count(figures.completed)} completed · ${count(figures.failed)} failed`);

  setText(row, ".tokens-in", `in ${count(figures.input)}`);
  setText(row, ".tokens-cached", cachedText(figures));
  setText(row, ".tokens-out", `out ${count(figures.output)}`);
  setText(row, ".speed", speedText(figures));

  setText(row, ".elapsed", `${figures.finished ? "took" : "elapsed"} ${duration(figures.elapsed)}`);
  setText(row, ".eta", figures.eta === null ? "" : `ETA ${duration(figures.eta)}`);
  showPairs(row.querySelector(".pairs"), batch.metadata);

  row.querySelector('[data-action="cancel"]').hidden = !CANCELLABLE.has(batch.status);
  row.querySelector('[data-action="output"]').hidden = !batch.output_file_id;
  row.querySelector('[data-action="errors"]').hidden = !batch.error_file_id;
}

function showPairs(list, metadata) {
  const items = Object.entries(metadata ?? {}).map(([key, value]) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "pair-key";
    name.textContent = key;
    item.append(name, value);
    item.title = `${key}: ${value}`; // the whole pair, where the list cuts it short
    return item;
  });
  list.replaceChildren(...items);
}

function goToPage(cursors) {
  state.cursors = cursors;
  poll();
}

async function onRowAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const { batch } = state.rows.get(button.closest("tr").dataset.batchId);
  $("list-message").textContent = "";
  try {
    if (button.dataset.action === "details") await openDetail(batch.id);
    else if (button.dataset.action === "cancel") await cancel(batch);
    else if (button.dataset.action === "output") await download(batch.output_file_id, `${batch.id}_output.jsonl`);
    else await download(batch.error_file_id, `${batch.id}_errors.jsonl`);
  } catch (error) {
    if (error.status === 401) askForKey("The server refused the key: enter it again.");
    else $("list-message").textContent = `${button.getAttribute("aria-label")}: ${error.message}`;
  }
}

async function cancel(batch) {
  if (!confirm(`Cancel ${batch.id}? What has finished stays in its output file.`)) return;
  await call(`v1/batches/${encodeURIComponent(batch.id)}/cancel`, { method: "POST" });
  await poll();
}

/** Fetch with the key (a plain link could not send it), then save the bytes under a file name. */
async function download(fileId, filename) {
  const blob = await (await call(`v1/files/${encodeURIComponent(fileId)}/content`)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// --- the detail view -------------------------------------------------------------------------

async function openDetail(batchId) {
  state.detailId = batchId;
  state.detailErrorFile = null;
  $("detail-title").textContent = `Batch ${batchId}`;
  $("detail-facts").replaceChildren();
  $("detail-errors").replaceChildren();
  $("detail-errors-note").textContent = "";
  $("detail").showModal();
  await refreshDetail();
}

async function refreshDetail() {
  const batch = await callJson(`v1/batches/${encodeURIComponent(state.detailId)}`);
  if (batch.id !== state.detailId) return; // closed, or another opened, meanwhile
  const figures = measure(batch);
  const facts = [
    ["Status", statusLabel(batch.status)],
    ["Endpoint", batch.endpoint],
    ["Model", batch.model ?? "–"],
    ["Requests", `${progressText(figures)}: ${count(figures.completed)} completed, ${count(figures.failed)} failed`],
    [
      "Tokens",
      `${count(figures.input)} in, ${cachedText(figures)}, ${count(figures.output)} out` +
        (figures.tokensPerSecond === null ? "" : ` (${speedText(figures)})`),
    ],
    ["Input file", batch.input_file_id],
    ["Output file", batch.output_file_id ?? "–"],
    ["Error file", batch.error_file_id ?? "–"],
    ["Created", when(batch.created_at)],
    ["In progress", when(batch.in_progress_at)],
    ...FINISHED_FIELDS.filter((name) => batch[name]).map((name) => [
      capitalized(name.replace(/_at$/, "")),
      when(batch[name]),
    ]),
    ["Expires", when(batch.expires_at)],
    ...Object.entries(batch.metadata ?? {}).map(([key, value]) => [`Metadata: ${key}`, value]),
  ];
  $("detail-facts").replaceChildren(
    ...facts.map(([term, text]) => {
      const pair = document.createElement("div");
      const name = document.createElement("dt");
      const value = document.createElement("dd");
      name.textContent = term;
      value.textContent = text;
      pair.append(name, value);
      return pair;
    }),
  );
  await showDetailErrors(batch);
}

async function showDetailErrors(batch) {
  const fileErrors = batch.errors?.data ?? [];
  if (fileErrors.length) {
    $("detail-errors-note").textContent = "The file as a whole could not run:";
    showErrorItems(
      fileErrors.map((error) => [error.line ? `line ${error.line}` : (error.code ?? "error"), error.message]),
    );
  } else if (batch.error_file_id && batch.error_file_id !== state.detailErrorFile) {
    state.detailErrorFile = batch.error_file_id;
    const records = await firstRecords(batch.error_file_id, ERROR_PREVIEW);
    const failed = batch.request_counts.failed;
    $("detail-errors-note").textContent =
      records.length < failed
        ? `The first ${records.length} of ${count(failed)} failed requests:`
        : "The failed requests:";
    showErrorItems(records.map((record) => [record.custom_id ?? "?", recordError(record)]));
  } else if (!batch.error_file_id) {
    const failed = batch.request_counts.failed;
    $("detail-errors-note").textContent = failed
      ? `${count(failed)} failed so far; their messages are in the error file when the batch ends.`
      : "None.";
  }
}

function recordError(record) {
  const error = record.error ?? record.response?.body?.error;
  return error?.message ?? JSON.stringify(record);
}

function showErrorItems(items) {
  $("detail-errors").replaceChildren(
    ...items.map(([where, message]) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "mono";
      label.textContent = where;
      item.append(label, `: ${message}`);
      return item;
    }),
  );
}

/** The first `limit` JSON lines of a file, reading no more of it than they take. */
async function firstRecords(fileId, limit) {
  const reader = (await call(`v1/files/${encodeURIComponent(fileId)}/content`)).body.getReader();
  const decoder = new TextDecoder();
  const lines = [];
  let rest = "";
  while (lines.length < limit) {
    const { value, done } = await reader.read();
    rest += decoder.decode(value, { stream: !done });
    const parts = rest.split("\n");
    rest = done ? "" : parts.pop();
    lines.push(...parts.filter((line) => line.trim()));
    if (done) break;
  }
  reader.cancel();
  return lines.slice(0, limit).map((line) => {
    try {
      return JSON.parse(line);
    } catch {
      return { error: { message: line } };
    }
  });
}

// --- a new batch -----------------------------------------------------------------------------

function say(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

async function fileChosen() {
  const file = $("file-input").files[0];
  $("file-name").textContent = file ? `${file.name} (${bytes(file.size)})` : "No file chosen";
  if (!file) return;
  // Preselect the endpoint the file's first line names.
  const firstLine = (await file.slice(0, 1 << 16).text()).split("\n").find((line) => line.trim());
  try {
    const url = JSON.parse(firstLine).url;
    if (state.facts?.batches.endpoints.includes(url)) $("endpoint").value = url;
  } catch {
    // not a JSON line: the batch's error file will say so
  }
}

function addPair() {
  const pair = document.createElement("div");
  pair.className = "pair";
  for (const part of ["key", "value"]) {
    const input = document.createElement("input");
    input.className = `metadata-${part}`;
    input.placeholder = part;
    input.maxLength = part === "key" ? 64 : 512;
    pair.append(input);
  }
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => {
    pair.remove();
    numberPairs();
    $("add-pair").focus();
  });
  pair.append(remove);
  $("metadata-pairs").append(pair);
  numberPairs();
  pair.querySelector("input").focus();
}

/** Name each pair's fields by its place in the list, as a screen reader says them. */
function numberPairs() {
  const pairs = [...$("metadata-pairs").children];
  pairs.forEach((pair, index) => {
    const [key, value, remove] = pair.children;
    key.setAttribute("aria-label", `Metadata key ${index + 1}`);
    value.setAttribute("aria-label", `Metadata value ${index + 1}`);
    remove.setAttribute("aria-label", `Remove metadata pair ${index + 1}`);
  });
  $("add-pair").disabled = pairs.length >= MAX_METADATA_PAIRS;
}

function metadata() {
  const pairs = [...$("metadata-pairs").children]
    .map((pair) => [pair.querySelector(".metadata-key").value.trim(), pair.querySelector(".metadata-value").value])
    .filter(([key]) => key);
  return pairs.length ? Object.fromEntries(pairs) : undefined;
}

async function startBatch(event) {
  event.preventDefault();
  const file = $("file-input").files[0];
  if (!file) {
    say("upload-message", "Choose a batch file first.", true);
    $("file-input").focus();
    return;
  }
  const button = $("start-batch");
  button.disabled = true;
  try {
    say("upload-message", `Uploading ${file.name} (${bytes(file.size)})…`);
    const form = new FormData();
    form.append("purpose", "batch"); // before the file: a wrong purpose is refused before the upload
    form.append("file", file, file.name);
    const uploaded = await callJson("v1/files", { method: "POST", body: form });
    say("upload-message", "Creating the batch…");
    const request = {
      input_file_id: uploaded.id,
      endpoint: $("endpoint").value,
      completion_window: "24h",
      metadata: metadata(),
    };
    let batch;
    try {
      batch = await callJson("v1/batches", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
      });
    } catch (error) {
      call(`v1/files/${encodeURIComponent(uploaded.id)}`, { method: "DELETE" }).catch(() => {});
      throw error;
    }
    say("upload-message", `Started ${batch.id} from ${file.name}.`);
    $("upload-form").reset();
    $("metadata-pairs").replaceChildren();
    numberPairs();
    await fileChosen();
    goToPage([null]);
  } catch (error) {
    if (error.status === 401) askForKey("The server refused the key: enter it again.");
    else say("upload-message", `Not started: ${error.message}`, true);
  } finally {
    button.disabled = !state.facts?.batches.endpoints.length;
  }
}

function watchDropZone() {
  const zone = $("drop-zone");
  // A file dropped anywhere else would make the browser leave the page to show it.
  for (const type of ["dragover", "drop"]) document.addEventListener(type, (event) => event.preventDefault());
  zone.addEventListener("dragover", () => zone.classList.add("dragging"));
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    if (!event.dataTransfer?.files.length) return;
    $("file-input").files = event.dataTransfer.files;
    fileChosen();
  });
}

// --- start -----------------------------------------------------------------------------------

async function start() {
  $("key-form").addEventListener("submit", tryKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("upload-form").addEventListener("submit", startBatch);
  $("file-input").addEventListener("change", fileChosen);
  $("add-pair").addEventListener("click", addPair);
  $("batch-rows").addEventListener("click", onRowAction);
  $("older").addEventListener("click", (event) => goToPage([...state.cursors, event.target.dataset.after]));
  $("newer").addEventListener("click", () => goToPage(state.cursors.slice(0, -1)));
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("close", () => {
    state.detailId = null;
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !$("app").hidden) poll();
  });
  watchDropZone();
  try {
    unlocked(await callJson("v1/vbatch/server"));
  } catch (error) {
    if (error.status === 401) askForKey(state.key ? "The server refused the saved key: enter it again." : "");
    else $("connection").textContent = `The server does not answer: ${error.message}. Reload to try again.`;
  }
}

start();
