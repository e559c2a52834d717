// Talking to the service: relative URLs (the page works under any mount path), the API key header,
// and the server's error messages turned into one readable line.

const KEY_STORAGE = "csm-serve.api-key";  // sessionStorage: gone when the tab closes
const keyInput = document.getElementById("api-key");

export const apiUrl = (path) => new URL(path, document.baseURI).toString();

export function authHeaders(extra = {}) {
  const key = keyInput.value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export function rememberKey(onChange) {
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    onChange();
  });
}

function errorMessage(body, status) {
  const detail = body && body.detail !== undefined ? body.detail : body;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && d.msg ? `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}` : String(d))).join("; ");
  }
  if (typeof detail === "string" && detail) return detail;
  return `request failed with HTTP ${status}`;
}

// The message of a failed response, with the server's Retry-After when it sent one.
export async function failure(response) {
  const text = await response.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* plain-text error, e.g. from a proxy */ }
  const retry = response.headers.get("Retry-After");
  return errorMessage(body, response.status) + (retry ? ` (retry after ${retry} s)` : "");
}

export class ApiError extends Error {
  constructor(message, status = null) { super(message); this.status = status; }
}

// A 401: the server wants a key. Open the key field and say so in the page's own terms.
function askForKey() {
  document.getElementById("key-box").open = true;
  keyInput.focus();
  return keyInput.value.trim() ? "the API key is not accepted: check it above" : "this server needs an API key: enter it above";
}

// fetch + error handling: resolves to the response when it is OK, throws ApiError with the
// server's message otherwise (and a plain one when the server cannot be reached).
export async function call(path, { method = "GET", json, form, signal } = {}) {
  const headers = authHeaders(json === undefined ? {} : { "Content-Type": "application/json" });
  const body = json !== undefined ? JSON.stringify(json) : form;
  let response;
  try {
    response = await fetch(apiUrl(path), { method, headers, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("can't reach the server: is it running?");
  }
  if (response.status === 401) throw new ApiError(askForKey(), 401);
  if (!response.ok) throw new ApiError(await failure(response), response.status);
  return response;
}
