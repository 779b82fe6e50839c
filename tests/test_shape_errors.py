"""Specs that do not fit their input are refused before allocation, naming layer and shapes."""

import pytest

from tests.test_errors import assert_problem

URL = "/v1/diagnostics"


def sequential(layers, input_shape, **extra):
    return {
        "model": {"kind": "sequential", "layers": layers},
        "input": {"shape": input_shape, "distribution": "normal"},
        "loss": "sum",
        **extra,
    }


CASES = {
    # name: (body, code, loc, words the message must contain)
    "conv2d_on_3d_input": (
        sequential([{"type": "conv2d", "out_channels": 4, "kernel_size": 3}], [2, 8, 8]),
        "shape_mismatch", ["body", "model", "layers", 0], ["layer 0", "conv2d", "[2, 8, 8]"],
    ),
    "conv_after_flatten": (
        sequential([{"type": "flatten"}, {"type": "conv2d", "out_channels": 4, "kernel_size": 3}], [2, 3, 8, 8]),
        "shape_mismatch", ["body", "model", "layers", 1], ["layer 1", "[2, 192]"],
    ),
    "residual_changes_channels": (
        sequential([{"type": "residual", "body": [{"type": "conv2d", "out_channels": 5, "kernel_size": 1}]}], [2, 3, 4, 4]),
        "shape_mismatch", ["body", "model", "layers", 0], ["residual", "[2, 5, 4, 4]", "projection"],
    ),
    "kernel_larger_than_input": (
        sequential([{"type": "conv1d", "out_channels": 2, "kernel_size": 9}], [1, 1, 4]),
        "shape_mismatch", ["body", "model", "layers", 0], ["kernel 9"],
    ),
    "pool_too_big": (
        sequential([{"type": "max_pool2d", "kernel_size": 5}], [1, 1, 4, 4]),
        "shape_mismatch", ["body", "model", "layers", 0], ["max_pool2d"],
    ),
    "heads_do_not_divide_width": (
        sequential([{"type": "attention", "heads": 3}], [1, 4, 8]),
        "shape_mismatch", ["body", "model", "layers", 0], ["heads=3", "8"],
    ),
    "block_heads_do_not_divide_width": (
        sequential([{"type": "linear", "out_features": 10}, {"type": "transformer_block", "heads": 4}], [1, 4, 8]),
        "shape_mismatch", ["body", "model", "layers", 1], ["heads=4", "10"],
    ),
    "nested_residual_error": (
        sequential([{"type": "residual", "body": [{"type": "attention", "heads": 3}]}], [1, 4, 8]),
        "shape_mismatch", ["body", "model", "layers", 0, "body", 0], ["heads=3"],
    ),
    "embedding_not_first": (
        sequential([{"type": "linear", "out_features": 4}, {"type": "embedding", "num_embeddings": 5, "embedding_dim": 2}], [1, 4]),
        "shape_mismatch", ["body", "model", "layers", 1], ["first layer"],
    ),
    "gpt_heads": (
        {"model": {"kind": "gpt", "preset": "gpt-micro", "n_heads": 3}, "input": [[1, 2]], "loss": "sum"},
        "shape_mismatch", ["body", "model", "n_heads"], ["n_heads=3", "emb_dim=8"],
    ),
    "gpt_context_too_long": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": {"shape": [1, 9], "distribution": "randint", "high": 16}, "loss": "sum"},
        "shape_mismatch", ["body", "input"], ["9 tokens", "context length 8"],
    ),
    "gpt_token_id_too_big": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": [[1, 2, 16]], "loss": "sum"},
        "invalid_tensor", ["body", "input", 0, 2], ["token id 16", "[0, 16)"],
    ),
    "gpt_generated_ids_too_big": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": {"shape": [1, 4], "distribution": "randint", "low": 15, "high": 99}, "loss": "sum"},
        "invalid_tensor", ["body", "input", "high"], ["token id", "at most 16"],
    ),
    "gpt_float_ids": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": [[1.0, 2.0]], "loss": "sum"},
        "invalid_tensor", ["body", "input", 0, 0], ["integer"],
    ),
    "gpt_1d_input": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": [1, 2], "loss": "sum"},
        "shape_mismatch", ["body", "input"], ["(batch, tokens)"],
    ),
    "gpt_missing_config": (
        {"model": {"kind": "gpt", "vocab_size": 10}, "input": [[1, 2]], "loss": "sum"},
        "invalid_request", ["body", "model"], ["missing", "context_length"],
    ),
    "gpt_target_shape": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": [[1, 2]], "target": [[1, 2, 3]], "loss": "cross_entropy"},
        "shape_mismatch", ["body", "target"], ["[1, 3]", "[1, 2]"],
    ),
    "batch_norm_one_value_per_channel": (
        sequential([{"type": "batch_norm"}], [1, 4]),
        "shape_mismatch", ["body", "model"], ["more than 1 value per channel"],
    ),
    "mlp_flat_input": (
        {"model": {"kind": "mlp", "layer_sizes": [3, 3, 1]}, "input": [1, 0, -1], "target": [[0.0]]},
        "shape_mismatch", ["body", "input"], ["input has shape [3]", "(batch, 3)", "[[...]]"],
    ),
    "mlp_flat_input_and_target": (
        {"model": {"kind": "mlp", "layer_sizes": [3, 3, 1]}, "input": [1, 0, -1], "target": [0.0]},
        "shape_mismatch", ["body", "input"], ["input has shape [3]", "(batch, 3)", "[[...]]"],
    ),
    "mlp_flat_generated_input": (
        {"model": {"kind": "mlp", "layer_sizes": [3, 1]}, "input": {"shape": [3], "distribution": "normal"}, "loss": "sum"},
        "shape_mismatch", ["body", "input"], ["(batch, 3)"],
    ),
    "sequential_flat_input": (
        {"model": {"kind": "sequential", "layers": [{"type": "linear", "out_features": 2}]}, "input": [1.0, 2.0], "loss": "sum"},
        "shape_mismatch", ["body", "input"], ["input has shape [2]", "linear", "(batch, ...)", "[[...]]"],
    ),
    "sequential_flat_token_ids": (
        {"model": {"kind": "sequential", "layers": [{"type": "embedding", "num_embeddings": 5, "embedding_dim": 2}]}, "input": [1, 2], "loss": "sum"},
        "shape_mismatch", ["body", "input"], ["embedding", "(batch, tokens)", "[[...]]"],
    ),
    "sequential_flat_input_to_conv": (
        sequential([{"type": "conv2d", "out_channels": 4, "kernel_size": 1}], [4]),
        "shape_mismatch", ["body", "input"], ["conv2d", "(batch, channels, height, width)"],
    ),
    "gpt_flat_ids_hint": (
        {"model": {"kind": "gpt", "preset": "gpt-micro"}, "input": [1, 2], "loss": "sum"},
        "shape_mismatch", ["body", "input"], ["input has shape [2]", "(batch, tokens)", "[[...]]"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_shape_error_names_layer_and_shapes(client, name):
    body, code, loc, words = CASES[name]
    problem = assert_problem(client.post(URL, json=body), 422, code, loc)
    for word in words:
        assert word in problem["detail"], (word, problem["detail"])


def test_budget_counts_every_layer_type(make_client):
    client = make_client(limits={"max_parameters": 100_000})
    body = sequential(
        [{"type": "conv2d", "out_channels": 64, "kernel_size": 3}, {"type": "flatten"},
         {"type": "linear", "out_features": 100}],
        [1, 3, 16, 16],
    )  # fmt: skip
    problem = assert_problem(client.post(URL, json=body), 422, "budget_exceeded")
    conv = 64 * 3 * 9 + 64
    linear = 64 * 14 * 14 * 100 + 100
    assert problem["estimate"]["parameters"] == conv + linear


def test_gpt2_small_budget_estimate_is_its_size(make_client):
    client = make_client(limits={"max_parameters": 1000})
    body = {"model": {"kind": "gpt", "preset": "gpt2-small"}, "input": [[1, 2, 3]], "loss": "sum"}
    problem = assert_problem(client.post(URL, json=body), 422, "budget_exceeded")
    # The course prints 163,009,536 (124M once the output head shares tok_emb's weights).
    assert problem["estimate"]["parameters"] == 163_009_536
