// The playground: the controls make a request; every change runs it and shows the answer.
import { Problem, getJson, postJson, postPlot } from "./api.js";
import { PRESETS, call } from "./requests.js";
import { curl, python } from "./snippets.js";
import { renderPlot, renderTable, renderVerdict } from "./view.js";

const KEY_STORAGE = "gradiag.apiKey";

const $ = (id) => document.getElementById(id);
const root = $("playground");
const form = $("controls");
const controls = {
  depth: $("depth"),
  activation: $("activation"),
  norm: $("norm"),
  shortcut: $("shortcut"),
  compare: $("compare"),
  key: $("key"),
};

/** @returns {import("./requests.js").Choice} */
function choice() {
  return {
    preset: form.elements.preset.value,
    depth: Number(controls.depth.value),
    activation: controls.activation.value,
    shortcut: controls.shortcut.checked,
    norm: controls.norm.value,
    compare: controls.compare.getAttribute("aria-pressed") === "true",
  };
}

/** Set the controls to the preset's defaults; disable those it does not use. */
function applyPreset(name) {
  const preset = PRESETS[name];
  Object.assign(controls.depth, { min: preset.minDepth, max: preset.maxDepth, value: preset.depth });
  controls.depth.disabled = preset.minDepth === preset.maxDepth;
  controls.activation.disabled = preset.activation === null;
  if (preset.activation !== null) controls.activation.value = preset.activation;
  controls.norm.disabled = preset.norm === null;
  if (preset.norm !== null) controls.norm.value = preset.norm;
  controls.shortcut.checked = preset.shortcut;
}

/** Keep the depth within the preset's bounds (typed values can be anything). */
function clampDepth() {
  const { minDepth, maxDepth } = PRESETS[form.elements.preset.value];
  const depth = Math.round(Number(controls.depth.value)) || minDepth;
  controls.depth.value = String(Math.min(maxDepth, Math.max(minDepth, depth)));
}

const apiKey = () => controls.key.value.trim();

function setStatus(text, state) {
  $("status").textContent = text;
  root.dataset.state = state;
}

/** @param {unknown} error */
function describe(error) {
  if (error instanceof Problem) {
    const hint = error.status === 401 ? " (enter an API key)" : "";
    return `${error.status} ${error.title}: ${error.message}${hint}`;
  }
  return `the request failed: ${error}`;
}

/** The activations this server offers, from its capabilities. */
async function loadCapabilities() {
  try {
    const capabilities = await getJson("/v1/capabilities", apiKey());
    const current = controls.activation.value;
    controls.activation.replaceChildren(
      ...capabilities.activations.map((name) => new Option(name, name, false, name === current)),
    );
  } catch (error) {
    setStatus(describe(error), "error");
  }
}

let running = null; // the AbortController of the run in flight

/** Run the current choice: summary (verdict, table) and plot, both from the API. */
async function run() {
  running?.abort(); // a newer choice replaces it; the server cancels its run
  const controller = new AbortController();
  running = controller;
  const current = call(choice());
  const keyed = apiKey() !== "";
  $("curl").textContent = curl(location.origin, current, keyed);
  $("python").textContent = python(location.origin, current, keyed);
  setStatus("running…", "busy");
  const started = performance.now();
  try {
    const [summary, plot] = await Promise.all([
      postJson(`${current.path}?view=summary`, current.body, apiKey(), controller.signal),
      postPlot(current.path, current.body, apiKey(), controller.signal),
    ]);
    if (running !== controller) return; // a stale answer: the newer run shows its own
    renderVerdict($("verdict"), summary, current.compare);
    renderTable($("layers"), summary, current.compare);
    await renderPlot($("plot-image"), $("plot-note"), plot);
    if (running !== controller) return; // a newer run took over while the plot loaded
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus(`${current.compare ? "compared" : "diagnosed"} in ${seconds} s`, "ready");
    root.dataset.runs = String(Number(root.dataset.runs) + 1);
  } catch (error) {
    if (controller.signal.aborted) return;
    setStatus(describe(error), "error");
  }
}

/** Copy a snippet; where the clipboard API is not offered (plain http off localhost), select it. */
async function copy(button) {
  const pre = $(button.dataset.copy);
  try {
    await navigator.clipboard.writeText(pre.textContent);
    button.textContent = "copied";
  } catch {
    getSelection().selectAllChildren(pre);
    button.textContent = "selected: press Ctrl+C";
  }
  setTimeout(() => (button.textContent = "copy"), 1500);
}

form.addEventListener("submit", (event) => event.preventDefault());
form.addEventListener("change", (event) => {
  if (event.target === controls.key) return;
  if (event.target.name === "preset") applyPreset(event.target.value);
  if (event.target === controls.depth) clampDepth();
  run();
});
controls.compare.addEventListener("click", () => {
  const pressed = controls.compare.getAttribute("aria-pressed") !== "true";
  controls.compare.setAttribute("aria-pressed", String(pressed));
  controls.shortcut.disabled = pressed; // both are run
  run();
});
controls.key.addEventListener("change", async () => {
  sessionStorage.setItem(KEY_STORAGE, apiKey());
  setStatus("checking the key…", "busy");
  await loadCapabilities();
  run();
});
for (const button of document.querySelectorAll("[data-copy]")) {
  button.addEventListener("click", () => copy(button));
}

controls.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
applyPreset(form.elements.preset.value);
loadCapabilities().then(run);
