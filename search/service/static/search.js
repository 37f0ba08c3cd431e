// A search's live page: its event stream, its artifacts, cancel and resume.
import { $, ApiError, Unauthorized, api, apiError, apiJson, cell, fixed, percent, show, sleep } from "./api.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const CANCELLABLE = new Set(["queued", "running", "interrupted"]);
const RESUMABLE = new Set(["interrupted", "cancelled", "failed"]);
const SHOWN_EVALUATIONS = 20;
// search/service/manager.py's ARTIFACTS, with how the page shows each (a test keeps the two in step).
export const ARTIFACTS = {
  "report.html": "text/html", "policy.json": "text/plain", "history.csv": "text/plain", "report.png": "image/png",
  "config.json": "text/plain", "pareto.json": "text/plain", "run.log": "text/plain",
  "service.log": "text/plain", "pruned.pt2": "download", "pruned.onnx": "download",
};

function showState(state) {
  $("s-state").textContent = state;
  $("s-state").className = `state ${state}`;
  $("cancel").disabled = !CANCELLABLE.has(state);
  $("resume").disabled = !RESUMABLE.has(state);
}

function setProgress(done, total, fraction) {
  $("s-progress").value = fraction;
  $("s-percent").textContent = percent(fraction);
  $("s-done").textContent = String(done);
  $("s-total").textContent = String(total);
}

function render(search) {
  $("s-id").textContent = search.id;
  showState(search.state);
  setProgress(search.evaluations_done, search.evaluations_total, search.progress);
  $("s-best-accuracy").textContent = search.best ? fixed(search.best.accuracy) : "–";
  $("s-best-cost").textContent = search.best ? fixed(search.best.cost_ratio) : "–";
  $("s-attempt").textContent = String(search.attempt);
  $("s-error").textContent = search.error || "–";
  $("s-settings").textContent = JSON.stringify(search.settings, null, 2);
}

function onEvent(event) {
  const data = event.data;
  if (event.event === "state") {
    showState(data.state);
  } else if (event.event === "evaluation") {
    setProgress(data.count, data.total, data.total ? Math.min(1, data.count / data.total) : 0);
    $("s-best-accuracy").textContent = fixed(data.best_accuracy);
    $("s-best-cost").textContent = fixed(data.best_cost_ratio);
    const body = $("evaluations").tBodies[0];
    const row = body.insertRow(0);
    for (const text of [data.index, fixed(data.accuracy), fixed(data.cost_ratio), fixed(data.reward)]) {
      cell(row, String(text));
    }
    while (body.rows.length > SHOWN_EVALUATIONS) body.deleteRow(-1);
  }
}

// One block of a text/event-stream body: {id, event, data, retry}, or null for a comment.
function parseEvent(block) {
  const event = { id: null, event: "message", data: [], retry: null };
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "data") event.data.push(value);
    else if (name === "id") event.id = Number(value);
    else if (name === "event") event.event = value;
    else if (name === "retry") event.retry = Number(value);
  }
  if (!event.data.length) return event.retry ? event : null;
  event.data = JSON.parse(event.data.join("\n"));
  return event;
}

async function refresh(searchId) {
  try {
    const search = await apiJson(`/v1/searches/${searchId}`);
    render(search);
    return search;
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("action-error").textContent = error.message;
    return null;
  }
}

// The event stream through fetch (EventSource cannot send the token), resumed with Last-Event-ID until the
// search stops. The stream also ends when the server stops; the page then reconnects.
async function watch(searchId, signal, state) {
  let retry = 2000;
  state.watching = true;
  while (!signal.aborted) {
    $("s-stream").textContent = "live";
    try {
      const headers = state.last ? { "Last-Event-ID": String(state.last) } : {};
      const response = await api(`/v1/searches/${searchId}/events`, { headers, signal });
      if (!response.ok) throw await apiError(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r/g, "");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          if (event.retry) retry = event.retry;
          if (event.id !== null) state.last = event.id;
          if (event.event === "message") continue;
          onEvent(event);
          if (event.event === "state") await refresh(searchId); // best, error and attempt come with it
        }
      }
    } catch (error) {
      if (signal.aborted || error instanceof Unauthorized) break;
      if (error instanceof ApiError && error.status === 404) {
        $("action-error").textContent = error.message;
        break;
      }
    }
    const search = await refresh(searchId);
    if (search && !ACTIVE.has(search.state)) break;
    $("s-stream").textContent = "reconnecting";
    await sleep(retry, signal);
  }
  $("s-stream").textContent = "";
  state.watching = false;
}

async function openArtifact(searchId, name) {
  $("artifact-error").textContent = "";
  const how = ARTIFACTS[name];
  // Opened now, inside the click, so that no pop-up blocker stops it; filled once the file is here.
  const tab = how === "download" ? null : window.open("", "_blank");
  if (tab) tab.opener = null;
  try {
    const response = await api(`/v1/searches/${searchId}/artifacts/${encodeURIComponent(name)}`);
    if (!response.ok) throw await apiError(response);
    const blob = await response.blob();
    const url = URL.createObjectURL(how === "download" ? blob : new Blob([blob], { type: how }));
    if (tab) {
      tab.location.href = url;
    } else {
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      link.click();
    }
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    tab?.close();
    if (!(error instanceof Unauthorized)) $("artifact-error").textContent = `${name}: ${error.message}`;
  }
}

async function act(searchId, action, state, signal) {
  $("action-error").textContent = "";
  try {
    render(await apiJson(`/v1/searches/${searchId}/${action}`, { method: "POST" }));
    if (!state.watching && !signal.aborted) watch(searchId, signal, state); // a resumed search runs again
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("action-error").textContent = error.message;
  }
}

// Shows the search and follows it; returns the view's {stop()}.
export function showSearch(searchId) {
  show("search-view");
  for (const id of ["action-error", "artifact-error", "s-state", "s-settings"]) $(id).textContent = "";
  $("s-id").textContent = searchId;
  $("evaluations").tBodies[0].replaceChildren();
  const list = $("artifacts");
  list.replaceChildren();
  for (const name of Object.keys(ARTIFACTS)) {
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = name;
    link.dataset.artifact = name;
    link.addEventListener("click", (event) => { event.preventDefault(); openArtifact(searchId, name); });
    const item = document.createElement("li");
    item.append(link);
    list.append(item);
  }
  const controller = new AbortController();
  const state = { last: 0, watching: true };
  $("cancel").onclick = () => act(searchId, "cancel", state, controller.signal);
  $("resume").onclick = () => act(searchId, "resume", state, controller.signal);
  refresh(searchId).then((search) => {
    if (search) watch(searchId, controller.signal, state);
    else state.watching = false;
  });
  return { stop: () => controller.abort() };
}
