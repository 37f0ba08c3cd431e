// A search's live page: its event stream, the search curve and the per-layer widths (charts.js), the comparison
// with the base model and the uniform policy, its artifacts, cancel, resume and delete.
import { $, ApiError, Unauthorized, api, apiError, apiJson, cell, fixed, percent, show, sleep } from "./api.js";
import { drawCurve, drawWidths } from "./charts.js";

const ACTIVE = new Set(["queued", "running", "cancelling"]);
const CANCELLABLE = new Set(["queued", "running", "interrupted"]);
// search/service/db.py's RESUMABLE: a failed search would fail again the same way (a test keeps the two in step).
export const RESUMABLE = ["interrupted", "cancelled"];
const SHOWN_EVALUATIONS = 20;
const SUMMARY_MS = 2000; // how often a running search's elapsed time, estimate and widths are read again
// search/service/manager.py's ARTIFACTS, with how the page shows each (a test keeps the two in step).
export const ARTIFACTS = {
  "report.html": "text/html", "policy.json": "text/plain", "history.csv": "text/plain", "report.png": "image/png",
  "config.json": "text/plain", "pareto.json": "text/plain", "run.log": "text/plain",
  "service.log": "text/plain", "pruned.pt2": "download", "pruned.onnx": "download",
  "pruned.pt": "download", "tokenizer.json": "text/plain",
};

// What the view holds of the shown search: its evaluations (from the event stream) and its best one.
// `asked` and `shown` order the reads of its state: a reply to a request sent before the one shown last is stale.
// `barrier` is the number taken when an action's reply arrived: the server had committed the action then, so a
// read sent before it may hold the state from before the action (a GET in flight while cancel or resume ran).
const view = { id: null, rows: [], bestIndex: null, drawn: false, strategy: null, asked: 0, shown: 0, barrier: 0 };

// Renders a search read by the request numbered `ticket`, unless it is stale (see `view`).
function renderFresh(search, ticket) {
  if (ticket < view.shown || ticket < view.barrier || search.id !== view.id) return false;
  view.shown = ticket;
  render(search);
  return true;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

function showState(state) {
  $("s-state").textContent = state;
  $("s-state").className = `state ${state}`;
  // Only the actions the state allows are offered.
  for (const [id, allowed] of [["cancel", CANCELLABLE.has(state)], ["resume", RESUMABLE.includes(state)],
    ["delete", Boolean(state) && !ACTIVE.has(state)]]) {
    $(id).hidden = !allowed;
    $(id).disabled = !allowed;
  }
}

function setProgress(done, total, fraction) {
  $("s-progress").value = fraction;
  $("s-percent").textContent = percent(fraction);
  $("s-done").textContent = String(done);
  $("s-total").textContent = String(total);
}

function showBest(index, accuracy, costRatio, step) {
  $("s-best-index").textContent = index === null || index === undefined ? "–" : String(index);
  $("s-best-accuracy").textContent = fixed(accuracy);
  $("s-best-cost").textContent = fixed(costRatio);
  // The dashboard numbers Optuna's trials: say which one this is.
  $("s-best-trial").textContent = view.strategy === "optuna" && step !== null && step !== undefined
    ? `(Optuna trial ${step})` : "";
}

function render(search) {
  $("s-id").textContent = search.id;
  view.strategy = search.options.strategy;
  showState(search.state);
  setProgress(search.evaluations_done, search.evaluations_total, search.progress);
  const best = search.best;
  showBest(best?.index, best?.accuracy, best?.cost_ratio, best?.step);
  if (best) setBest(best.index);
  $("s-attempt").textContent = String(search.attempt);
  $("s-error").textContent = search.error || "–";
  $("s-settings").textContent = JSON.stringify(search.settings, null, 2);
}

function setBest(index) {
  if (index === view.bestIndex) return;
  view.bestIndex = index;
  redraw();
}

// The curve and the table are drawn once per frame, however many events came in it.
function redraw() {
  if (view.drawn) return;
  view.drawn = true;
  requestAnimationFrame(() => {
    view.drawn = false;
    drawCurve($("curve"), view.rows, view.bestIndex);
    renderTable();
  });
}

// The latest rows, newest first, and the best row (marked; kept below them when it is older).
function renderTable() {
  const body = $("evaluations").tBodies[0];
  body.replaceChildren();
  const shown = view.rows.slice(-SHOWN_EVALUATIONS).reverse();
  const best = view.rows.find((r) => r.index === view.bestIndex);
  if (best && !shown.includes(best)) shown.push(best);
  for (const r of shown) {
    const row = body.insertRow();
    row.dataset.index = String(r.index);
    for (const text of [r.index, fixed(r.accuracy), fixed(r.cost_ratio), fixed(r.reward)]) cell(row, String(text));
    const isBest = r.index === view.bestIndex;
    cell(row, isBest ? "★ best" : "");
    row.classList.toggle("best", isBest);
  }
}

function onEvent(event) {
  const data = event.data;
  if (event.event === "state") {
    // The state itself is read by refresh() (watch), in request order: an event can be older than an action.
  } else if (event.event === "evaluation") {
    setProgress(data.count, data.total, data.total ? Math.min(1, data.count / data.total) : 0);
    view.rows.push({ index: data.index, accuracy: data.accuracy, cost_ratio: data.cost_ratio, reward: data.reward });
    showBest(data.best_index, data.best_accuracy, data.best_cost_ratio, null); // the best up to this row
    view.bestIndex = data.best_index;
    redraw();
  }
}

function setCell(model, column, text) {
  document.querySelector(`#comparison tr[data-model='${model}']`).cells[column].textContent = text;
}

function renderSummary(summary, state) {
  $("s-elapsed").textContent = duration(summary.elapsed_s);
  const running = ACTIVE.has(state) && summary.remaining_s !== null;
  $("s-remaining-part").hidden = !running;
  $("s-remaining").textContent = running ? duration(summary.remaining_s) : "";
  for (const [model, val, test, cost] of [
    ["base", summary.base_val_accuracy, summary.base_test_accuracy, 1],
    ["best", summary.best_val_accuracy, summary.best_test_accuracy, summary.best_cost_ratio],
    ["uniform", summary.uniform_val_accuracy, summary.uniform_test_accuracy, summary.uniform_cost_ratio]]) {
    setCell(model, 1, fixed(val));
    setCell(model, 2, fixed(test));
    setCell(model, 3, fixed(cost));
  }
  drawWidths($("widths"), summary.layers);
  const final = summary.layers.some((l) => l.base !== null);
  $("widths-note").textContent = final ? ""
    : "While the search runs: the keep ratios of the best policy so far (base 1); widths in channels and the "
      + "uniform policy once it ends.";
}

async function refreshSummary(searchId, state) {
  try {
    renderSummary(await apiJson(`/v1/searches/${searchId}/summary`), state);
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("action-error").textContent = error.message;
  }
}

// The artifacts the run folder holds: a link each (nothing for a file not written).
async function refreshArtifacts(searchId) {
  let artifacts;
  try {
    artifacts = (await apiJson(`/v1/searches/${searchId}/artifacts`)).artifacts;
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("artifact-error").textContent = error.message;
    return;
  }
  const list = $("artifacts");
  list.replaceChildren();
  for (const { name } of artifacts) {
    if (!(name in ARTIFACTS)) continue;
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = name;
    link.dataset.artifact = name;
    link.addEventListener("click", (event) => { event.preventDefault(); openArtifact(searchId, name); });
    const item = document.createElement("li");
    item.append(link);
    list.append(item);
  }
  $("artifacts-empty").hidden = list.children.length > 0;
}

async function refreshDetails(searchId, state) {
  await Promise.all([refreshSummary(searchId, state), refreshArtifacts(searchId)]);
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
    const ticket = ++view.asked;
    const search = await apiJson(`/v1/searches/${searchId}`);
    if (!renderFresh(search, ticket)) return search;
    await refreshDetails(searchId, search.state);
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
    await refresh(searchId);
    // The state shown, not this read's: a resume answered meanwhile shows an active state, and this loop goes on.
    const shown = $("s-state").textContent;
    if (shown && !ACTIVE.has(shown)) break;
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
    const search = await apiJson(`/v1/searches/${searchId}/${action}`, { method: "POST" });
    view.barrier = ++view.asked;
    renderFresh(search, view.barrier);
    if (!state.watching && !signal.aborted) watch(searchId, signal, state); // a resumed search runs again
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("action-error").textContent = error.message;
  }
}

async function remove(searchId) {
  $("action-error").textContent = "";
  if (!window.confirm(`Delete search ${searchId}: its row, its events, its run folder and its study?`)) return;
  try {
    const response = await api(`/v1/searches/${searchId}`, { method: "DELETE" });
    if (!response.ok) throw await apiError(response);
    location.hash = "#/";
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("action-error").textContent = error.message;
  }
}

// While the search runs, its elapsed time, estimate, widths and artifacts are read again now and then.
async function followDetails(searchId, signal) {
  while (!signal.aborted) {
    await sleep(SUMMARY_MS, signal);
    if (signal.aborted) break;
    const state = $("s-state").textContent;
    if (ACTIVE.has(state)) await refreshDetails(searchId, state);
  }
}

// Shows the search and follows it; returns the view's {stop()}.
export function showSearch(searchId) {
  show("search-view");
  for (const id of ["action-error", "artifact-error", "s-state", "s-settings", "widths-note"]) $(id).textContent = "";
  $("s-id").textContent = searchId;
  Object.assign(view, { id: searchId, rows: [], bestIndex: null, strategy: null });
  showState("");
  showBest(null, null, null, null);
  $("evaluations").tBodies[0].replaceChildren();
  $("artifacts").replaceChildren();
  $("curve").replaceChildren();
  $("widths").replaceChildren();
  const controller = new AbortController();
  const state = { last: 0, watching: true };
  $("cancel").onclick = () => act(searchId, "cancel", state, controller.signal);
  $("resume").onclick = () => act(searchId, "resume", state, controller.signal);
  $("delete").onclick = () => remove(searchId);
  refresh(searchId).then((search) => {
    if (search) {
      drawCurve($("curve"), view.rows, view.bestIndex);
      watch(searchId, controller.signal, state);
      followDetails(searchId, controller.signal);
    } else {
      state.watching = false;
    }
  });
  return { stop: () => controller.abort() };
}
