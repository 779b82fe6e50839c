// The call the page made, as curl and as the Python client (service.client).

const WIDTH = 88; // a Python literal's line is split above this many characters

/** @param {string} text @returns {string} text inside single quotes, for a POSIX shell */
function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

/**
 * curl posting the call for the page's view (the summary).
 * @param {string} origin @param {{path: string, body: object}} call @param {boolean} keyed
 */
export function curl(origin, call, keyed) {
  const lines = [
    `curl -sS -X POST ${shellQuote(`${origin}${call.path}?view=summary`)}`,
    `  -H 'Content-Type: application/json'`,
  ];
  if (keyed) lines.push(`  -H "Authorization: Bearer $GRADIAG_API_KEY"`);
  lines.push(`  -d ${shellQuote(JSON.stringify(call.body))}`);
  return lines.join(" \\\n");
}

/** @param {unknown} value @returns {string} on one line */
function flat(value) {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return JSON.stringify(value); // its escapes are Python's too
  if (typeof value === "number") return String(value);
  if (Array.isArray(value)) return `[${value.map(flat).join(", ")}]`;
  const items = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${flat(v)}`);
  return `{${items.join(", ")}}`;
}

/**
 * A Python literal of JSON `value`, split over lines where it is long.
 * @param {unknown} value @param {number} indent the current line's indent
 */
export function pythonLiteral(value, indent = 0) {
  const one = flat(value);
  if (indent + one.length <= WIDTH || value === null || typeof value !== "object") return one;
  const pad = " ".repeat(indent + 4);
  const items = Array.isArray(value)
    ? value.map((v) => pad + pythonLiteral(v, indent + 4))
    : Object.entries(value).map(([k, v]) => `${pad}${JSON.stringify(k)}: ${pythonLiteral(v, indent + 4)}`);
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  return `${open}\n${items.join(",\n")},\n${" ".repeat(indent)}${close}`;
}

/**
 * The client's call for the same request: diagnose, or compare.
 * @param {string} origin @param {{body: object, compare: boolean}} call @param {boolean} keyed
 */
export function python(origin, call, keyed) {
  const client = keyed
    ? `Client(${JSON.stringify(origin)}, api_key=os.environ["GRADIAG_API_KEY"])`
    : `Client(${JSON.stringify(origin)})`;
  const method = call.compare ? "compare" : "diagnose";
  const shown = call.compare
    ? 'print({name: run["diagnosis"]["verdict"] for name, run in report["runs"].items()})'
    : 'print(report["diagnosis"]["verdict"])';
  return [
    ...(keyed ? ["import os", ""] : []),
    "from service.client import Client",
    "",
    `report = ${client}.${method}(${pythonLiteral(call.body)})`,
    shown,
  ].join("\n");
}
