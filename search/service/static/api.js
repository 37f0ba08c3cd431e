// The /v1 API with the bearer token, and the small helpers the page's views share.
// Every piece of data the page shows comes through here, and goes on the page as text, never as HTML.

const TOKEN_KEY = "amc-service-token";

export const $ = (id) => document.getElementById(id);

// The token lives in this tab's sessionStorage only; `refused` is called when the service answers 401.
export const auth = { token: sessionStorage.getItem(TOKEN_KEY), refused: () => {} };

export function setToken(token) {
  auth.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, body) {
    super(body.detail || `HTTP ${status}`);
    this.status = status;
    this.field = body.field;
  }
}

export async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${auth.token}` };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    auth.refused();
    throw new Unauthorized();
  }
  return response;
}

export async function apiError(response) {
  return new ApiError(response.status, await response.json().catch(() => ({})));
}

export async function apiJson(path, options) {
  const response = await api(path, options);
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// Shows these sections of <main> and hides the others.
export function show(...ids) {
  for (const section of document.querySelectorAll("main > section")) section.hidden = !ids.includes(section.id);
  $("nav").hidden = !auth.token;
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

export const percent = (x) => `${Math.round(100 * x)}%`;

export const fixed = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

export function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}
