// The requests the playground posts: a preset with the controls' values applied.

/** @typedef {"lesson" | "mlp" | "gpt"} Preset */
/**
 * @typedef {object} Choice
 * @property {Preset} preset
 * @property {number} depth  layers of the MLP, or the GPT's blocks
 * @property {string} activation  the MLP's
 * @property {boolean} shortcut
 * @property {"pre" | "post" | "none"} norm  the GPT's
 * @property {boolean} compare  shortcut against plain, side by side
 */

// The controls each preset uses, their defaults, and the depths it allows.
export const PRESETS = {
  lesson: { depth: 5, minDepth: 5, maxDepth: 5, activation: "gelu_tanh", shortcut: true, norm: null },
  mlp: { depth: 12, minDepth: 2, maxDepth: 64, activation: "gelu_tanh", shortcut: false, norm: null },
  gpt: { depth: 2, minDepth: 1, maxDepth: 12, activation: null, shortcut: true, norm: "pre" },
};

// LESSON_REQUEST of service/schemas/requests.py (tests/test_playground_browser.py keeps them equal).
const LESSON = {
  model: {
    kind: "mlp",
    layer_sizes: [3, 3, 3, 3, 3, 1],
    activation: "gelu_tanh",
    shortcut: true,
    bias: true,
  },
  input: [[1.0, 0.0, -1.0]],
  target: [[0.0]],
  loss: "mse",
  seed: 123,
};

// A GPT small enough for a page: token ids drawn by the server from seeded generators.
const GPT = { vocab_size: 64, context_length: 16, emb_dim: 32, n_heads: 2, drop_rate: 0.0, qkv_bias: false };
const tokens = (seed) => ({ shape: [2, 16], distribution: "randint", high: 64, seed });

// The lesson's experiment as one call (the compare route's docs give the same variants).
export const VARIANTS = { plain: { model: { shortcut: false } }, shortcut: { model: { shortcut: true } } };

/** @param {Choice} choice @returns {object} a DiagnosticsRequest */
export function diagnosticsRequest(choice) {
  if (choice.preset === "lesson") {
    const request = structuredClone(LESSON);
    Object.assign(request.model, { activation: choice.activation, shortcut: choice.shortcut });
    return request;
  }
  if (choice.preset === "mlp") {
    const sizes = [...Array(choice.depth).fill(3), 1];
    return {
      ...structuredClone(LESSON),
      model: { kind: "mlp", layer_sizes: sizes, activation: choice.activation, shortcut: choice.shortcut, bias: true },
    };
  }
  return {
    model: { kind: "gpt", ...GPT, n_layers: choice.depth, shortcut: choice.shortcut, norm: choice.norm },
    input: tokens(1),
    target: tokens(2),
    loss: "cross_entropy",
    seed: 123,
  };
}

/**
 * The route and body of the call the choice makes.
 * @param {Choice} choice
 * @returns {{path: string, body: object, compare: boolean}}
 */
export function call(choice) {
  const request = diagnosticsRequest(choice);
  if (choice.compare) {
    return { path: "/v1/diagnostics/compare", body: { base: request, variants: VARIANTS }, compare: true };
  }
  return { path: "/v1/diagnostics", body: request, compare: false };
}
