// The gateway's JSON APIs from the browser: the signed-in token, calls, and errors in plain words.
//
// The token is kept in sessionStorage (this tab, until it closes) and sent as a Bearer header.
// No cookie is ever set, so there is no ambient credential for another site to ride on (no CSRF).

const TOKEN_KEY = "uplion.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function remember(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The public id of a token (`upl-<id>-<secret>`), or null. */
export function tokenId(value = token()) {
  const found = /^upl-([0-9a-f]+)-/.exec(value || "");
  return found ? found[1] : null;
}

export class ApiError extends Error {
  constructor(status, error = {}, headers = null) {
    super(error.message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = error.code || null;
    this.type = error.type || null;
    this.param = error.param || null;
    const retry = headers ? Number.parseFloat(headers.get("retry-after")) : Number.NaN;
    this.retryAfter = Number.isFinite(retry) ? Math.max(1, Math.ceil(retry)) : null;
  }
}

/** The ApiError of a failed response, whatever its body (OpenAI's shape, v2's, or none). */
export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  let error = { message: response.statusText };
  if (body && typeof body.error === "object" && body.error !== null) error = body.error;
  else if (body && typeof body.error === "string") error = { message: body.error };
  return new ApiError(response.status, error, response.headers);
}

/** `fetch` with the token; a failed response throws ApiError, an unreachable gateway status 0. */
export async function open(method, path, body, signal) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { message: "network error" });
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** A JSON call: the parsed answer. */
export async function call(method, path, body) {
  const response = await open(method, path, body);
  return response.json();
}

/** A JSON call whose endpoint may be absent on this gateway (404 unknown URL, 501): null then. */
export async function optional(method, path) {
  try {
    return await call(method, path);
  } catch (error) {
    if (error.status === 501 || (error.status === 404 && error.code === "unknown_url")) return null;
    throw error;
  }
}

/** What went wrong, in plain words for a person. */
export function describe(error) {
  if (!(error instanceof ApiError)) return `Something went wrong in this page: ${error.message}`;
  const message = error.message;
  switch (error.status) {
    case 0:
      return "Cannot reach the gateway. Check the connection and try again.";
    case 401:
      return `Your API token was not accepted: ${message}`;
    case 403:
      return `Not allowed: ${message}`;
    case 429:
      if (error.code === "insufficient_quota") {
        return `Quota used up: ${message} Ask an admin for a larger quota or wait for the next period.`;
      }
      return error.retryAfter
        ? `Rate limit reached — try again in ${error.retryAfter} s.`
        : "Rate limit reached — try again shortly.";
    case 503:
      if (error.code === "model_failed") return `This model is unavailable: ${message}`;
      return `The service is unavailable for a moment: ${message} Try again shortly.`;
    case 504:
      return `No answer in time: ${message}`;
    default:
      if (error.status >= 500) return `The server failed: ${message}`;
      return `The request was refused: ${message}`;
  }
}
