// The jobs view: recent requests of every dialect (GET /v1/requests), their webhook deliveries,
// and the two things an operator does from here: replay a webhook, cancel a request.

import { request } from "./api.js";
import { element, formatAge, formatSeconds, toast } from "./dom.js";

const REFRESH_MS = 2000;
const PAGE = 50;
const REPLAYABLE = new Set(["failed", "retrying"]);
const REPLAY_WAIT_MS = 60000; // outlasts a webhook attempt's timeout (15 s by default)

function badge(text, kind = text) {
  return element("span", { className: `badge ${kind}` }, text);
}

function duration(summary) {
  if (summary.total_seconds !== null) return formatSeconds(summary.total_seconds);
  return `${formatSeconds((Date.now() - Date.parse(summary.created_at)) / 1000)} so far`;
}

function webhookCell(webhook) {
  if (!webhook) return element("span", { className: "muted" }, "—");
  const attempts = webhook.attempts === 1 ? "1 attempt" : `${webhook.attempts} attempts`;
  const cell = element("span", { className: "webhook" }, badge(webhook.state), " ", element("span", { className: "muted" }, attempts));
  cell.title = webhook.last_error ? `${webhook.url}\nlast error: ${webhook.last_error}` : webhook.url;
  return cell;
}

function attemptsTable(deliveries) {
  if (!deliveries.length) return element("p", { className: "muted" }, "No webhook was asked for.");
  return element(
    "div",
    {},
    ...deliveries.map((delivery) =>
      element(
        "div",
        { className: "delivery" },
        element("div", {}, badge(delivery.state), " ", element("code", {}, delivery.id), " → ", element("span", { className: "mono" }, delivery.url)),
        element(
          "table",
          { className: "attempts" },
          element("thead", {}, element("tr", {}, ...["#", "at", "answer", "latency", "error"].map((h) => element("th", {}, h)))),
          element(
            "tbody",
            {},
            ...delivery.attempts.map((attempt) =>
              element(
                "tr",
                {},
                element("td", {}, String(attempt.attempt), attempt.replay ? " (replay)" : ""),
                element("td", {}, new Date(attempt.at).toLocaleTimeString()),
                element("td", {}, attempt.status_code === null ? "—" : `HTTP ${attempt.status_code}`),
                element("td", { className: "num" }, `${Math.round(attempt.latency_ms)} ms`),
                element("td", { className: "muted" }, attempt.error || ""),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

export function jobsView({ body, empty, autoRefresh, refreshButton }) {
  const expanded = new Set();
  const shownDetails = new Map(); // request id -> the details last shown, kept on screen while refreshing
  let timer = null;
  let loading = false;
  let loadAgain = false;

  // The server answers a replay at once and sends it in the background: follow the delivery's
  // history until the replayed attempt is in it.
  async function replayedAttempt(deliveryId, started) {
    const seen = started.delivery.attempts.length;
    const history = `/v1/requests/${encodeURIComponent(started.delivery.request_id)}/webhooks`;
    for (const deadline = Date.now() + REPLAY_WAIT_MS; Date.now() < deadline; ) {
      const { deliveries } = await request(history);
      const delivery = deliveries.find((candidate) => candidate.id === deliveryId);
      const replayed = delivery && delivery.attempts.slice(seen).find((attempt) => attempt.replay);
      if (replayed) return replayed;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    return null;
  }

  async function replay(summary, button) {
    button.disabled = true;
    try {
      const deliveryId = summary.webhook.delivery_id;
      const started = await request(`/v1/webhooks/deliveries/${encodeURIComponent(deliveryId)}/replay`, {
        method: "POST",
      });
      const last = await replayedAttempt(deliveryId, started);
      const delivered = Boolean(last && last.status_code >= 200 && last.status_code < 300);
      const detail = last && last.status_code ? `HTTP ${last.status_code}` : (last && last.error) || "no answer yet";
      toast(delivered ? `Webhook delivered (${detail})` : `Webhook still failing: ${detail}`, delivered ? "ok" : "error");
    } catch (error) {
      toast(`Replay failed: ${error.message}`, "error");
    }
    await load();
  }

  async function cancel(summary, button) {
    button.disabled = true;
    try {
      await request(summary.cancel_url, { method: "PUT" });
      toast(`Cancelling ${summary.request_id.slice(0, 8)}`);
    } catch (error) {
      toast(`Cancel failed: ${error.message}`, "error");
    }
    await load();
  }

  function actions(summary) {
    const cell = element("td", { className: "actions-cell" });
    if (summary.webhook && REPLAYABLE.has(summary.webhook.state)) {
      const button = element("button", { type: "button", className: "button ghost small replay" }, "Replay webhook");
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        replay(summary, button);
      });
      cell.append(button);
    }
    if (summary.outcome === "queued" || summary.outcome === "running") {
      const button = element("button", { type: "button", className: "button danger small cancel" }, "Cancel");
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        cancel(summary, button);
      });
      cell.append(button);
    }
    return cell;
  }

  function details(summary) {
    const shown = shownDetails.get(summary.request_id) || [element("span", { className: "muted" }, "loading…")];
    const box = element("td", { colSpan: 8, className: "details" }, ...shown);
    const row = element("tr", { className: "details-row" }, box);
    request(`/v1/requests/${encodeURIComponent(summary.request_id)}/webhooks`)
      .then((answer) => {
        const parts = [];
        if (summary.error) parts.push(element("div", { className: "banner error" }, `${summary.error_type}: ${summary.error}`));
        parts.push(element("div", { className: "muted" }, "Request ", element("code", {}, summary.request_id)));
        parts.push(attemptsTable(answer.deliveries));
        shownDetails.set(summary.request_id, parts);
        box.replaceChildren(...parts);
      })
      .catch((error) => box.replaceChildren(element("span", { className: "field-error" }, error.message)));
    return row;
  }

  function summaryRow(summary) {
    const row = element(
      "tr",
      { className: "job", dataset: { requestId: summary.request_id } },
      element("td", { title: summary.created_at }, formatAge(summary.created_at)),
      element("td", {}, element("code", { title: summary.request_id }, summary.request_id.slice(0, 8))),
      element("td", {}, summary.endpoint),
      element("td", { className: "muted" }, summary.dialect),
      element("td", { title: summary.error || "" }, badge(summary.outcome)),
      element("td", { className: "num" }, duration(summary)),
      element("td", {}, webhookCell(summary.webhook)),
      actions(summary),
    );
    row.addEventListener("click", () => {
      if (expanded.has(summary.request_id)) expanded.delete(summary.request_id);
      else expanded.add(summary.request_id);
      load();
    });
    return row;
  }

  async function load() {
    if (loading) {
      loadAgain = true; // a replay or cancel landed mid-refresh: show its effect too
      return;
    }
    loading = true;
    try {
      const answer = await request(`/v1/requests?limit=${PAGE}`);
      const rows = [];
      for (const summary of answer.requests) {
        rows.push(summaryRow(summary));
        if (expanded.has(summary.request_id)) rows.push(details(summary));
      }
      body.replaceChildren(...rows);
      empty.hidden = answer.requests.length > 0;
    } catch (error) {
      if (error.status !== 401) toast(`Could not list requests: ${error.message}`, "error");
    } finally {
      loading = false;
    }
    if (loadAgain) {
      loadAgain = false;
      await load();
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = autoRefresh.checked ? setInterval(load, REFRESH_MS) : null;
  }

  refreshButton.addEventListener("click", load);
  autoRefresh.addEventListener("change", schedule);
  return {
    show() {
      load();
      schedule();
    },
    hide() {
      clearInterval(timer);
      timer = null;
    },
    load,
  };
}
