// The playground: pick an endpoint, fill its form, queue it through the fal queue API, follow it
// over the request's event stream (typed progress, new log lines), see the images; and the jobs view
// beside it.

import { apiKey, request, setApiKey, streamRequest, whenUnauthorized } from "./api.js";
import { copyText, element, formatBytes, formatSeconds, toast } from "./dom.js";
import { buildForm } from "./form.js";
import { jobsView } from "./jobs.js";
import { snippet } from "./snippets.js";

const $ = (id) => document.getElementById(id);
const CANCELLED = "request_cancelled";
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const STREAM_RETRIES = 20;
const HEALTH_MS = 15000;

const state = { models: [], model: null, form: null, snippetKind: "curl", run: null };
const jobs = jobsView({ body: $("jobs"), empty: $("jobs-empty"), autoRefresh: $("auto-refresh"), refreshButton: $("refresh") });

// -- API key ---------------------------------------------------------------------------------------

function showKeyState() {
  $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
}

function askForKey(reason) {
  $("key-reason").textContent = reason;
  $("key-input").value = apiKey();
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key-input").focus();
}

whenUnauthorized((message) =>
  askForKey(
    apiKey()
      ? `The server refused this key (${message}). Enter one of its HIDREAM_API_KEYS.`
      : "This server asks for an API key: enter one of its HIDREAM_API_KEYS.",
  ),
);

$("key-button").addEventListener("click", () => askForKey("Requests from this page carry this key, as any client's would."));
$("key-cancel").addEventListener("click", () => $("key-dialog").close());
$("key-forget").addEventListener("click", () => {
  setApiKey("");
  $("key-input").value = "";
  showKeyState();
  $("key-dialog").close();
  toast("Key forgotten");
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("key-input").value.trim());
  showKeyState();
  $("key-dialog").close();
  checkKey();
  if (!$("view-jobs").hidden) jobs.load();
});

// -- views -----------------------------------------------------------------------------------------

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  $("view-playground").hidden = name !== "playground";
  $("view-jobs").hidden = name !== "jobs";
  if (name === "jobs") jobs.show();
  else jobs.hide();
  history.replaceState(null, "", name === "jobs" ? "#jobs" : location.pathname + location.search);
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));

async function refreshHealth() {
  const pill = $("health");
  try {
    const health = await (await fetch("/health")).json();
    const plural = (count, noun) => `${count} ${noun}${count === 1 ? "" : "s"}`;
    pill.textContent = `${plural(health.workers, "worker")} · ${plural(health.endpoints.length, "endpoint")}`;
    pill.className = health.workers > 0 ? "pill ok" : "pill warn";
  } catch {
    pill.textContent = "server unreachable";
    pill.className = "pill bad";
  }
}

// -- the form --------------------------------------------------------------------------------------

function updateSnippet() {
  if (!state.model) return;
  const input = state.form.values();
  $("snippet").textContent = snippet(state.snippetKind, location.origin, state.model, input, $("webhook-url").value.trim());
}

function selectModel(id) {
  state.model = state.models.find((model) => model.id === id) || state.models[0];
  $("endpoint").value = state.model.id;
  const names = Object.entries(state.model.names || {})
    .filter(([dialect, name]) => dialect !== "fal" && name)
    .map(([dialect, name]) => `${dialect}: ${name}`);
  $("endpoint-names").textContent = names.length ? `Also served as ${names.join(" · ")}` : "";
  state.form = buildForm(state.model, $("fields"), $("advanced-fields"), updateSnippet);
  $("form-error").hidden = true;
  updateSnippet();
}

async function loadCatalogue() {
  let answer;
  try {
    answer = await request("/models");
  } catch (error) {
    if (error.status !== 401) showFormError(`Could not load the endpoint catalogue: ${error.message}`);
    return;
  }
  state.models = answer.models;
  $("endpoint").replaceChildren(
    ...state.models.map((model) => element("option", { value: model.id }, `${model.id} — ${model.title}`)),
  );
  const wanted = new URLSearchParams(location.search).get("endpoint");
  const preferred = state.models.find((model) => model.id === wanted) || state.models.find((model) => !model.id.endsWith("/noop"));
  selectModel(state.model ? state.model.id : (preferred || state.models[0]).id);
}

function showFormError(message) {
  $("form-error").textContent = message;
  $("form-error").hidden = !message;
}

$("endpoint").addEventListener("change", () => selectModel($("endpoint").value));
$("webhook-url").addEventListener("input", updateSnippet);
$("reset").addEventListener("click", () => {
  state.form.reset();
  $("webhook-url").value = "";
  updateSnippet();
});

for (const segment of document.querySelectorAll(".segment")) {
  segment.addEventListener("click", () => {
    state.snippetKind = segment.dataset.snippet;
    for (const other of document.querySelectorAll(".segment")) other.setAttribute("aria-selected", String(other === segment));
    updateSnippet();
  });
}

$("copy").addEventListener("click", async () => {
  toast((await copyText($("snippet").textContent)) ? "Copied" : "Copy failed: select the text instead", "ok");
});

// -- a run -----------------------------------------------------------------------------------------

function setBadge(text, kind) {
  $("run-status").textContent = text;
  $("run-status").className = `badge ${kind}`;
}

function setProgress(percent, label, kind = "") {
  $("progress-fill").style.width = `${percent}%`;
  $("progress").setAttribute("aria-valuenow", String(Math.round(percent)));
  $("progress").className = `progress ${kind}`;
  $("progress-label").textContent = label;
}

function showLogs(logs) {
  const lines = (logs || []).map((line) => `${line.timestamp.slice(11, 23)}  ${line.message}`);
  $("logs").textContent = lines.join("\n");
  $("logs").scrollTop = $("logs").scrollHeight;
  $("log-count").textContent = lines.length ? `(${lines.length})` : "";
}

// The forming image, beside the progress bar while the request runs (a small JPEG data URI).
function showPreview(image) {
  if (image) $("preview").src = image;
  else $("preview").removeAttribute("src");
  $("preview").hidden = !image;
}

function percent(progress) {
  return progress && progress.total > 0 ? (100 * progress.step) / progress.total : 0;
}

function onEvent(run, event) {
  if (run !== state.run) return;
  run.logs.push(...event.logs);
  showLogs(run.logs);
  if (ENDED.has(event.outcome)) {
    run.done = true;
    finishRun(run, event);
  } else if (event.status === "IN_QUEUE") {
    setBadge("queued", "queued");
    const position = event.queue_position;
    setProgress(0, position > 0 ? `${position} ahead in the queue` : "next in line", "waiting");
  } else {
    setBadge(run.cancelling ? "cancelling" : "running", "running");
    const { progress } = event;
    if (progress) setProgress(percent(progress), `step ${progress.step}/${progress.total}`);
    else setProgress(0, "starting", "waiting");
    if (event.preview) showPreview(event.preview.image);
  }
}

function stopRun(run) {
  clearInterval(run.timer);
  $("cancel").disabled = true;
}

function finishRun(run, event) {
  stopRun(run);
  showPreview(null);
  const seconds = (performance.now() - run.started) / 1000;
  $("run-elapsed").textContent = formatSeconds(seconds);
  if (event.error) {
    const cancelled = event.error_type === CANCELLED;
    setBadge(cancelled ? "cancelled" : "failed", cancelled ? "cancelled" : "failed");
    setProgress(percent(event.progress), cancelled ? "cancelled" : "failed", "stopped");
    $("run-error").textContent = cancelled ? "Cancelled: the request stopped before it finished." : `${event.error_type}: ${event.error}`;
    $("run-error").hidden = false;
    return;
  }
  setBadge("done", "succeeded");
  setProgress(100, "done", "complete");
  showResult(event.result, event, seconds);
}

function showResult(result, event, seconds) {
  const inference = event.inference_seconds;
  const meta = [`seed ${result.seed}`];
  if (inference !== null && inference !== undefined) meta.push(`inference ${formatSeconds(inference)}`);
  meta.push(`total ${formatSeconds(seconds)}`);
  $("result-meta").textContent = meta.join(" · ");
  const figures = (result.images || []).map((image, index) =>
    element(
      "figure",
      { className: "image" },
      element("a", { href: image.url, target: "_blank", rel: "noopener" }, element("img", { src: image.url, alt: `output ${index + 1}` })),
      element(
        "figcaption",
        {},
        element("span", { className: "size" }, `${image.width}×${image.height}`),
        ` · ${(image.content_type || "").replace("image/", "")} · ${formatBytes(image.file_size || 0)} · seed ${result.seed + index}`,
      ),
    ),
  );
  $("images").replaceChildren(...figures);
  $("result").hidden = false;
}

async function follow(run) {
  for (let attempt = 0; attempt < STREAM_RETRIES && !run.done; attempt += 1) {
    run.logs = []; // a new stream's first event carries every line so far
    try {
      await streamRequest(run.handle.request_id, (event) => onEvent(run, event), run.abort.signal);
    } catch (error) {
      if (run.abort.signal.aborted) return;
      if (error.status && error.status < 500) {
        stopRun(run);
        setBadge("lost", "failed");
        $("run-error").textContent = `Lost the request: ${error.message}`;
        $("run-error").hidden = false;
        return;
      }
    }
    if (!run.done) await new Promise((resolve) => setTimeout(resolve, 500)); // the stream dropped: reconnect
  }
}

function startRun(handle) {
  if (state.run) {
    state.run.abort.abort();
    clearInterval(state.run.timer);
  }
  const run = { handle, abort: new AbortController(), started: performance.now(), done: false, cancelling: false, logs: [] };
  state.run = run;
  $("run-empty").hidden = true;
  $("run-body").hidden = false;
  $("run-id").textContent = handle.request_id;
  $("run-error").hidden = true;
  $("result").hidden = true;
  showPreview(null);
  $("cancel").disabled = false;
  showLogs([]);
  setBadge("queued", "queued");
  setProgress(0, "submitted", "waiting");
  run.timer = setInterval(() => {
    $("run-elapsed").textContent = formatSeconds((performance.now() - run.started) / 1000);
  }, 100);
  follow(run);
}

$("cancel").addEventListener("click", async () => {
  const run = state.run;
  if (!run || run.done) return;
  run.cancelling = true;
  $("cancel").disabled = true;
  try {
    await request(run.handle.cancel_url, { method: "PUT" });
    setBadge("cancelling", "running");
  } catch (error) {
    toast(`Cancel failed: ${error.message}`, "error");
    $("cancel").disabled = run.done;
  }
});

$("request-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.model) return;
  state.form.clearErrors();
  showFormError("");
  const webhook = $("webhook-url").value.trim();
  const query = webhook ? `?fal_webhook=${encodeURIComponent(webhook)}` : "";
  $("submit").disabled = true;
  $("submit").textContent = "Submitting…";
  try {
    startRun(await request(`/${state.model.id}${query}`, { method: "POST", json: state.form.values() }));
  } catch (error) {
    if (Array.isArray(error.detail)) {
      const unplaced = state.form.showErrors(error.detail);
      showFormError(unplaced.length ? unplaced.join("; ") : "Some fields need another value (see below each one).");
    } else if (error.status !== 401) {
      showFormError(error.message);
    }
  } finally {
    $("submit").disabled = false;
    $("submit").textContent = "Generate";
  }
});

// -- start -----------------------------------------------------------------------------------------

/** The catalogue is public; a listing is not, so it tells whether this server wants a key (a 401 asks). */
async function checkKey() {
  try {
    await request("/v1/requests?limit=1");
  } catch {
    // a 401 opened the key dialog; anything else shows where it happens
  }
}

showKeyState();
refreshHealth();
setInterval(refreshHealth, HEALTH_MS);
loadCatalogue();
checkKey();
showView(location.hash === "#jobs" ? "jobs" : "playground");
