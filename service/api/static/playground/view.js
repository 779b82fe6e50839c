// Writing a summary (`?view=summary`) into the page: the verdict, a row per layer, the plot.

/** @param {number | null} value @returns {string} 4 significant digits; null (no gradient,
 * or not finite: the verdict says which) as a dash */
export function number(value) {
  return value === null ? "—" : value.toPrecision(4);
}

/** @param {string} tag @param {string} text @param {string} [className] */
function element(tag, text, className = "") {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) node.className = className;
  return node;
}

/** @param {string} verdict @returns {HTMLElement} coloured by its verdict (playground.css) */
function verdictBadge(verdict) {
  const badge = element("span", verdict, "verdict");
  badge.dataset.verdict = verdict;
  return badge;
}

/**
 * The diagnosis: one verdict with the loss and findings, or one verdict per compared run.
 * @param {HTMLElement} box @param {any} summary @param {boolean} compare
 */
export function renderVerdict(box, summary, compare) {
  box.replaceChildren();
  if (compare) {
    for (const [name, run] of Object.entries(summary.runs)) {
      const line = element("p", "");
      line.dataset.run = name;
      line.append(element("span", `${name}:`, "run"), verdictBadge(run.diagnosis.verdict));
      box.append(line);
    }
    return;
  }
  const findings = document.createElement("ul");
  findings.append(...summary.diagnosis.findings.map((f) => element("li", f)));
  box.append(verdictBadge(summary.diagnosis.verdict), element("p", `loss ${number(summary.loss)}`), findings);
}

/** @param {string} text @param {string} [verdict] @returns {HTMLTableCellElement} */
function cell(text, verdict) {
  const td = element("td", text);
  if (verdict) td.dataset.verdict = verdict;
  return /** @type {HTMLTableCellElement} */ (td);
}

/** @param {any} layer @param {boolean} compare @returns {HTMLTableCellElement[]} a run's cells */
function layerCells(layer, compare) {
  if (layer === null) return compare ? [cell(""), cell("")] : [cell(""), cell(""), cell(""), cell("")];
  const verdict = cell(layer.verdict, layer.verdict);
  if (compare) return [cell(number(layer.output_grad_mean_abs)), verdict];
  return [
    cell(number(layer.output_grad_mean_abs)),
    cell(number(layer.param_grad_mean_abs)),
    cell(number(layer.relative_to_last)),
    verdict,
  ];
}

/**
 * A row per layer: its gradients and verdict, or each compared run's.
 * @param {HTMLTableElement} table @param {any} summary @param {boolean} compare
 */
export function renderTable(table, summary, compare) {
  const runs = compare ? Object.entries(summary.runs) : [["", summary]];
  const titles = compare
    ? runs.flatMap(([name]) => [`${name}: mean |∂L/∂out|`, `${name}: verdict`])
    : ["mean |∂L/∂out|", "mean |∂L/∂θ|", "÷ last layer", "verdict"];
  const head = document.createElement("tr");
  head.append(...["layer", ...titles].map((title) => element("th", title)));
  table.tHead.replaceChildren(head);
  // Every layer of any run, in order of first appearance: variants may differ in depth.
  const names = [...new Set(runs.flatMap(([, run]) => run.layers.map((layer) => layer.name)))];
  const rows = names.map((name) => {
    const row = document.createElement("tr");
    row.dataset.layer = name;
    const cells = runs.flatMap(([, run]) => {
      const layer = run.layers.find((candidate) => candidate.name === name);
      return layer ? layerCells(layer, compare) : layerCells(null, compare);
    });
    row.append(element("td", name), ...cells);
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
}

/**
 * Show the chart (an SVG blob), loaded before this resolves, or the note why there is none.
 * @param {HTMLImageElement} image @param {HTMLElement} caption
 * @param {{svg: Blob | null, note: string}} plot
 */
export async function renderPlot(image, caption, plot) {
  if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src); // the last plot's
  caption.textContent = plot.note;
  if (plot.svg === null) {
    image.hidden = true;
    image.removeAttribute("src");
    return;
  }
  image.src = URL.createObjectURL(plot.svg);
  image.hidden = false;
  try {
    await image.decode();
  } catch {
    image.hidden = true;
    caption.textContent = "the plot did not load";
  }
}
