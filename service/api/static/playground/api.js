// Calls to this origin's API; an error answer becomes a Problem (RFC 9457's fields).

export class Problem extends Error {
  /** @param {number} status @param {{title?: string, detail?: string, code?: string}} body */
  constructor(status, body) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.name = "Problem";
    this.status = status;
    this.title = body.title || `HTTP ${status}`;
    this.code = body.code || "";
  }
}

/** @param {string} key @returns {Record<string, string>} */
function auth(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** @param {Response} response */
async function problem(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  return new Problem(response.status, body);
}

/** @param {string} path @param {string} key @param {AbortSignal} [signal] */
export async function getJson(path, key, signal) {
  const response = await fetch(path, { headers: { Accept: "application/json", ...auth(key) }, signal });
  if (!response.ok) throw await problem(response);
  return response.json();
}

/** @param {string} path @param {object} body @param {string} key @param {AbortSignal} signal */
export async function postJson(path, body, key, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json", ...auth(key) },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await problem(response);
  return response.json();
}

/**
 * The chart of the same call, or why there is none (a server without plots answers JSON).
 * @param {string} path @param {object} body @param {string} key @param {AbortSignal} signal
 * @returns {Promise<{svg: Blob | null, note: string}>}
 */
export async function postPlot(path, body, key, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: { Accept: "image/svg+xml", "Content-Type": "application/json", ...auth(key) },
    body: JSON.stringify(body),
    signal,
  });
  const type = response.headers.get("Content-Type") || "";
  if (response.ok && type.startsWith("image/svg+xml")) return { svg: await response.blob(), note: "" };
  if (!response.ok) return { svg: null, note: `no plot: ${(await problem(response)).message}` };
  await response.body?.cancel(); // a report, not a chart: unread
  return { svg: null, note: "this server answers no plots (Accept: image/svg+xml)" };
}
