// The service's web page: signing in, the list of searches, the form, and the routes between the views
// (search/service/web.py says how the page signs in; search.js is a search's live page).
import { $, Unauthorized, api, apiJson, auth, cell, fixed, percent, setToken, show, sleep } from "./api.js";
import { showSearch } from "./search.js";

const MAIN_FIELDS = ["budget", "strategy", "evaluations", "resource", "model", "dataset", "sampler", "score",
  "seed", "no_export"];

let current = null; // the shown view's {stop()}: its timers and streams end when another view opens
let formBuilt = false;
let idempotencyKey = newKey();

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- signing in ------------------------------------------------------------------------------------------------

async function signIn(candidate) {
  const response = await fetch("/v1/searches?limit=1", { headers: { Authorization: `Bearer ${candidate}` } });
  if (response.status === 401) {
    $("login-error").textContent = "Wrong token: the service refused it.";
    return;
  }
  setToken(candidate);
  $("login-error").textContent = "";
  $("token").value = "";
  await openDashboardSession();
  route();
}

async function openDashboardSession() {
  // The dashboard's cookie (HttpOnly: the page never sees it); the page itself works without it.
  await api("/ui/session", { method: "POST" }).catch(() => {});
}

function signOut(message = "") {
  setToken(null);
  fetch("/ui/session", { method: "DELETE" }).catch(() => {});
  current?.stop();
  current = null;
  $("login-error").textContent = message;
  show("login-view");
}

// --- the list and the form -------------------------------------------------------------------------------------

function showHome() {
  show("list-view", "new-view");
  if (!formBuilt) buildForm();
  const controller = new AbortController();
  (async () => {
    while (!controller.signal.aborted) {
      await refreshList();
      await sleep(2000, controller.signal);
    }
  })();
  return { stop: () => controller.abort() };
}

async function refreshList() {
  let searches;
  try {
    searches = (await apiJson("/v1/searches?limit=1000")).searches.reverse(); // newest first
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("list-error").textContent = `Cannot list the searches: ${error.message}`;
    return;
  }
  $("list-error").textContent = "";
  const body = $("searches").tBodies[0];
  body.replaceChildren();
  for (const s of searches) {
    const row = body.insertRow();
    row.dataset.id = s.id;
    const link = document.createElement("a");
    link.href = `#/searches/${s.id}`;
    link.textContent = s.id;
    cell(row, "").append(link);
    cell(row, s.state).className = `state ${s.state}`;
    cell(row, s.options.strategy ?? "");
    cell(row, String(s.options.budget ?? ""));
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = s.progress;
    cell(row, ` ${percent(s.progress)}`).prepend(bar);
    cell(row, s.best ? fixed(s.best.accuracy) : "–");
    cell(row, new Date(s.created_at).toLocaleString());
  }
  $("list-empty").hidden = searches.length > 0;
}

function kindOf(schema) {
  if (schema.enum) return "enum";
  if (schema.type) return schema.type; // boolean, integer, number, string
  const types = (schema.anyOf || []).map((s) => s.type);
  if (types.includes("array")) return "list"; // comma-separated values in one string are accepted too
  return types.every((t) => t === "number" || t === "integer") ? "number" : "string";
}

function field(name, schema) {
  const kind = kindOf(schema);
  const wrapper = document.createElement("div");
  wrapper.className = "field";
  const label = document.createElement("label");
  label.htmlFor = `f-${name}`;
  label.textContent = name;
  let input;
  if (kind === "enum") {
    input = document.createElement("select");
    input.add(new Option("(default)", ""));
    for (const choice of schema.enum) input.add(new Option(choice, choice));
  } else {
    input = document.createElement("input");
    input.type = kind === "boolean" ? "checkbox" : kind === "integer" || kind === "number" ? "number" : "text";
    if (input.type === "number") input.step = kind === "integer" ? "1" : "any";
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (schema.maxLength !== undefined) input.maxLength = schema.maxLength;
  }
  input.id = `f-${name}`;
  input.name = name;
  input.dataset.kind = kind;
  const help = document.createElement("small");
  help.textContent = schema.description || "";
  wrapper.append(label, input, help);
  return wrapper;
}

// The form is laid out from the OpenAPI document: the submit body's settings, their choices and help.
async function buildForm() {
  formBuilt = true;
  let properties;
  try {
    properties = (await apiJson("/openapi.json")).components.schemas.SearchSettings.properties;
  } catch (error) {
    formBuilt = false;
    if (!(error instanceof Unauthorized)) $("submit-error").textContent = `Cannot load the settings: ${error.message}`;
    return;
  }
  for (const name of MAIN_FIELDS) if (properties[name]) $("main-fields").append(field(name, properties[name]));
  for (const [name, schema] of Object.entries(properties)) {
    if (!MAIN_FIELDS.includes(name)) $("more-fields").append(field(name, schema));
  }
}

// The POST /v1/searches body: the filled-in fields only (an empty one takes search.py's default).
function settingsOf(form) {
  const settings = {};
  for (const input of form.querySelectorAll("[data-kind]")) {
    const kind = input.dataset.kind;
    if (kind === "boolean") {
      if (input.checked) settings[input.name] = true;
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;
    const number = Number(raw); // a value that is no number goes as it is: the service says what is wrong
    settings[input.name] = (kind === "integer" || kind === "number") && Number.isFinite(number) ? number : raw;
  }
  return settings;
}

async function submitSearch(event) {
  event.preventDefault();
  const form = event.target;
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  $("submit").disabled = true;
  $("submit-error").textContent = "";
  try {
    const search = await apiJson("/v1/searches", {
      method: "POST", body: JSON.stringify(settingsOf(form)),
      headers: { "Content-Type": "application/json", "Idempotency-Key": idempotencyKey },
    });
    idempotencyKey = newKey(); // the next submission is a new search; a retry of this one was the same
    location.hash = `#/searches/${search.id}`;
  } catch (error) {
    if (error instanceof Unauthorized) return;
    $("submit-error").textContent = error.message;
    if (error.field) $(`f-${error.field}`)?.setAttribute("aria-invalid", "true");
  } finally {
    $("submit").disabled = false;
  }
}

// --- routing: #/ is the list and the form, #/searches/<id> a search ---------------------------------------------

function route() {
  current?.stop();
  current = null;
  if (!auth.token) {
    show("login-view");
    $("token").focus();
    return;
  }
  const match = /^#\/searches\/([0-9a-f]{16})$/.exec(location.hash);
  current = match ? showSearch(match[1]) : showHome();
}

auth.refused = () => signOut("The service refused the token: sign in again.");
$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("sign-out").addEventListener("click", () => signOut());
$("submit-form").addEventListener("submit", submitSearch);
window.addEventListener("hashchange", route);
if (auth.token) openDashboardSession();
route();
