"""Bad input gets a clear 4xx problem+json with a stable code and the field's location."""

import copy

import pytest

from service.architectures.layers import LAYER_TYPES
from service.architectures.registry import MODEL_KINDS
from service.schemas.requests import LESSON_REQUEST
from service.schemas.tensors import DISTRIBUTIONS

URL = "/v1/diagnostics"


def with_(**changes) -> dict:
    body = copy.deepcopy(LESSON_REQUEST)
    for key, value in changes.items():
        if key.startswith("model_"):
            body["model"][key.removeprefix("model_")] = value
        else:
            body[key] = value
    return body


def assert_problem(response, status: int, code: str, loc: list | None = None) -> dict:
    assert response.status_code == status, response.text[:600]
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {"type", "title", "status", "detail", "code", "errors"} <= set(problem)
    assert problem["status"] == status and problem["code"] == code
    for leak in ("Traceback", 'File "', "/work/", "site-packages"):
        assert leak not in response.text
    if loc is not None:
        assert loc in [e["loc"] for e in problem["errors"]], problem["errors"]
    return problem


RAW_BODIES = {
    "nan_literal": b'{"model": {"kind": "mlp", "layer_sizes": [3, 1]}, "input": [[NaN, 0, 1]]}',
    "infinity_literal": b'{"model": {"kind": "mlp", "layer_sizes": [3, 1]}, "input": [[Infinity]]}',
    "overflow_to_inf": b'{"model": {"kind": "mlp", "layer_sizes": [1, 1]}, "input": [[1e999]]}',
    "not_json": b"model=mlp&input=1",
    "truncated": b'{"model": {"kind": "mlp"',
    "deep_nesting": b"[" * 5000 + b"]" * 5000,
}


@pytest.mark.parametrize("name", RAW_BODIES)
def test_malformed_json_is_400(client, name):
    response = client.post(
        URL, content=RAW_BODIES[name], headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "invalid_request")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(client, content_type):
    response = client.post(URL, content=b"{}", headers={"content-type": content_type})
    assert_problem(response, 415, "unsupported_media_type")


def test_json_suffix_media_types_are_accepted(client):
    import orjson

    body = orjson.dumps(LESSON_REQUEST)
    response = client.post(
        URL, content=body, headers={"content-type": "application/vnd.gradiag+json"}
    )
    assert response.status_code == 200


CASES = {
    # name: (body, status, code, loc)
    "bool_in_tensor": (
        with_(input=[[1.0, True, 0.0]]),
        422,
        "invalid_tensor",
        ["body", "input", 0, 1],
    ),
    "string_in_tensor": (
        with_(input=[[1.0, "2", 0.0]]),
        422,
        "invalid_tensor",
        ["body", "input", 0, 1],
    ),
    "null_in_tensor": (
        with_(input=[[1.0, 0.0, None]]),
        422,
        "invalid_tensor",
        ["body", "input", 0, 2],
    ),
    "ragged_rows": (
        with_(input=[[1.0, 0.0, -1.0], [1.0, 2.0]], target=[[0.0], [0.0]]),
        422,
        "invalid_tensor",
        ["body", "input", 1],
    ),
    "list_where_number": (
        with_(input=[[1.0, [0.0], -1.0]]),
        422,
        "invalid_tensor",
        ["body", "input", 0, 1],
    ),
    "empty_tensor": (with_(input=[]), 422, "invalid_tensor", ["body", "input"]),
    "empty_row": (with_(input=[[]]), 422, "invalid_tensor", ["body", "input", 0]),
    "nine_dims": (with_(input=[[[[[[[[[1.0]]]]]]]]]), 422, "invalid_tensor", ["body", "input"]),
    "input_width": (with_(input=[[1.0, 0.0]]), 422, "shape_mismatch", ["body", "input"]),
    "target_shape": (with_(target=[[0.0, 1.0]]), 422, "shape_mismatch", ["body", "target"]),
    "missing_target": (with_(target=None), 422, "invalid_request", ["body", "target"]),
    "sum_with_target": (with_(loss="sum"), 422, "invalid_request", ["body", "target"]),
    "class_id_out_of_range": (
        with_(loss="cross_entropy", target=[1]),
        422,
        "invalid_tensor",
        ["body", "target", 0],
    ),
    "negative_class_id": (
        with_(loss="cross_entropy", target=[-1]),
        422,
        "invalid_tensor",
        ["body", "target", 0],
    ),
    "float_class_id": (
        with_(model_layer_sizes=[3, 2], loss="cross_entropy", target=[1.0]),
        422,
        "invalid_tensor",
        ["body", "target", 0],
    ),
    "zero_size": (
        with_(model_layer_sizes=[3, 0, 1]),
        422,
        "invalid_request",
        ["body", "model", "layer_sizes", 1],
    ),
    "negative_size": (
        with_(model_layer_sizes=[3, -2, 1]),
        422,
        "invalid_request",
        ["body", "model", "layer_sizes", 1],
    ),
    "one_size": (
        with_(model_layer_sizes=[3]),
        422,
        "invalid_request",
        ["body", "model", "layer_sizes"],
    ),
    "bool_size": (
        with_(model_layer_sizes=[3, True]),
        422,
        "invalid_request",
        ["body", "model", "layer_sizes", 1],
    ),
    "float_size": (
        with_(model_layer_sizes=[3, 1.0]),
        422,
        "invalid_request",
        ["body", "model", "layer_sizes", 1],
    ),
    "unknown_activation": (
        with_(model_activation="gelux"),
        422,
        "invalid_request",
        ["body", "model", "activation"],
    ),
    "unknown_loss": (with_(loss="hinge"), 422, "invalid_request", ["body", "loss"]),
    "unknown_kind": (with_(model_kind="cnn"), 422, "invalid_request", ["body", "model", "kind"]),
    "extra_field": (with_(learning_rate=0.1), 422, "invalid_request", ["body", "learning_rate"]),
    "extra_model_field": (
        with_(model_dropout=0.1),
        422,
        "invalid_request",
        ["body", "model", "dropout"],
    ),
    "string_seed": (with_(seed="123"), 422, "invalid_request", ["body", "seed"]),
    "bool_seed": (with_(seed=True), 422, "invalid_request", ["body", "seed"]),
    "negative_seed": (with_(seed=-1), 422, "invalid_request", ["body", "seed"]),
    "seed_2_64": (with_(seed=2**64), 422, "invalid_request", ["body", "seed"]),
    "string_shortcut": (
        with_(model_shortcut="yes"),
        422,
        "invalid_request",
        ["body", "model", "shortcut"],
    ),
    "bad_dtype": (with_(dtype="float16"), 422, "invalid_request", ["body", "dtype"]),
    "device_not_allowed": (with_(device="cuda"), 422, "unsupported_device", ["body", "device"]),
    "device_unknown": (with_(device="tpu"), 422, "invalid_request", ["body", "device"]),
    "zero_generator_dim": (
        with_(input={"shape": [0, 3], "distribution": "normal"}),
        422,
        "invalid_request",
        ["body", "input", "shape", 0],
    ),
    "uniform_low_high": (
        with_(input={"shape": [1, 3], "distribution": "uniform", "low": 1, "high": 0}),
        422,
        "invalid_request",
        ["body", "input"],
    ),
    "unknown_distribution": (
        with_(input={"shape": [1, 3], "distribution": "cauchy"}),
        422,
        "invalid_request",
        ["body", "input", "distribution"],
    ),
    "tensor_as_string": (with_(input="[[1, 0, -1]]"), 422, "invalid_request", ["body", "input"]),
    "threshold_nonpositive": (
        with_(thresholds={"vanishing": 0}),
        422,
        "invalid_request",
        ["body", "thresholds", "vanishing"],
    ),
    "body_not_object": ([1, 2, 3], 422, "invalid_request", None),
    "huge_int_in_tensor": (with_(input=[[10**40, 0, 1]]), 422, "invalid_tensor", ["body", "input"]),
    "overflow_float32": (with_(input=[[1e39, 0.0, 1.0]]), 422, "invalid_tensor", ["body", "input"]),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_request_is_a_clean_4xx(client, name):
    body, status, code, loc = CASES[name]
    assert_problem(client.post(URL, json=body), status, code, loc)


def test_budget_exceeded_gives_estimate_and_limit(make_client):
    client = make_client(limits={"max_parameters": 1000})
    body = with_(model_layer_sizes=[3, 100, 100, 1])
    problem = assert_problem(client.post(URL, json=body), 422, "budget_exceeded")
    assert problem["estimate"]["parameters"] == 3 * 100 + 100 + 100 * 100 + 100 + 100 + 1
    assert problem["limit"]["parameters"] == 1000
    assert problem["exceeded"] == ["parameters"]


def test_input_elements_budget(make_client):
    client = make_client(limits={"max_input_elements": 100})
    body = with_(
        input={"shape": [1000, 3], "distribution": "normal"},
        target={"shape": [1000, 1], "distribution": "zeros"},
    )
    problem = assert_problem(client.post(URL, json=body), 422, "budget_exceeded")
    assert problem["exceeded"] == ["input_elements"]


def test_declared_body_over_limit_is_413(make_client):
    client = make_client(max_body_bytes=4096)
    body = b"{" + b" " * 5000 + b"}"
    assert_problem(
        client.post(URL, content=body, headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )


def test_chunked_body_over_limit_is_413(make_client):
    client = make_client(max_body_bytes=4096)

    def chunks():
        yield b'{"input": ['
        for _ in range(2000):
            yield b"1.0, "
        yield b"1.0]}"

    response = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413, "body_too_large")


def test_unknown_path_and_method(client):
    assert_problem(client.get("/v1/nothing"), 404, "not_found")
    assert_problem(client.get(URL), 405, "method_not_allowed")


def test_compare_variant_errors_are_located(client):
    body = {
        "base": LESSON_REQUEST,
        "variants": {"ok": {}, "bad": {"model": {"activation": "nope"}}},
    }
    assert_problem(
        client.post(f"{URL}/compare", json=body), 422, "invalid_request",
        ["body", "variants", "bad", "model", "activation"],
    )  # fmt: skip
    shape = {"base": LESSON_REQUEST, "variants": {"wide": {"input": [[1.0, 2.0]]}}}
    assert_problem(
        client.post(f"{URL}/compare", json=shape),
        422,
        "shape_mismatch",
        ["body", "variants", "wide", "input"],
    )
    empty = {"base": LESSON_REQUEST, "variants": {}}
    assert_problem(
        client.post(f"{URL}/compare", json=empty), 422, "invalid_request", ["body", "variants"]
    )


def _one_of(values) -> str:
    return "one of " + ", ".join(repr(value) for value in values)


KINDS = _one_of(MODEL_KINDS)
SEQUENTIAL = {"kind": "sequential", "layers": [{"type": "linear", "out_features": 1}]}
TAG_CASES = {
    # name: (body, loc, message)
    "missing_kind": (
        {"model": {"layer_sizes": [3, 1]}, "input": [[1.0, 2.0, 3.0]], "target": [[0.0]]},
        ["body", "model", "kind"],
        f"`kind` is required: {KINDS}",
    ),
    "unknown_kind": (
        with_(model_kind="foo"),
        ["body", "model", "kind"],
        f"'foo' is not a model kind: {KINDS}",
    ),
    "kind_not_a_string": (
        with_(model_kind=3),
        ["body", "model", "kind"],
        f"`kind` must be a string: {KINDS}",
    ),
    "missing_layer_type": (
        with_(model={**SEQUENTIAL, "layers": [{"out_features": 1}]}, loss="sum", target=None),
        ["body", "model", "layers", 0, "type"],
        f"`type` is required: {_one_of(LAYER_TYPES)}",
    ),
    "unknown_layer_type_in_residual": (
        with_(
            model={**SEQUENTIAL, "layers": [{"type": "residual", "body": [{"type": "lin"}]}]},
            loss="sum",
            target=None,
        ),
        ["body", "model", "layers", 0, "body", 0, "type"],
        f"'lin' is not a layer type: {_one_of(LAYER_TYPES)}",
    ),
    "missing_distribution": (
        with_(input={"shape": [1, 3]}),
        ["body", "input", "distribution"],
        f"`distribution` is required: {_one_of(DISTRIBUTIONS)}",
    ),
    "unknown_distribution": (
        with_(input={"shape": [1, 3], "distribution": "cauchy"}),
        ["body", "input", "distribution"],
        f"'cauchy' is not a distribution: {_one_of(DISTRIBUTIONS)}",
    ),
}


@pytest.mark.parametrize("name", TAG_CASES)
def test_missing_or_unknown_tag_lists_the_values(client, name):
    body, loc, message = TAG_CASES[name]
    problem = assert_problem(client.post(URL, json=body), 422, "invalid_request", loc)
    assert [e["msg"] for e in problem["errors"] if e["loc"] == loc] == [message]
    assert problem["detail"] == f"{'.'.join(map(str, loc))}: {message}"


def test_derived_requests_list_the_kinds(client):
    """Compare variants are validated by the service, not by the route: same sentence."""
    body = {"base": LESSON_REQUEST, "variants": {"ok": {}, "nokind": {"model": {"kind": None}}}}
    problem = assert_problem(
        client.post(f"{URL}/compare", json=body), 422, "invalid_request",
        ["body", "variants", "nokind", "model", "kind"],
    )  # fmt: skip
    assert problem["errors"][0]["msg"] == f"`kind` is required: {KINDS}"
    assert problem["detail"].endswith(f"`kind` is required: {KINDS}")


def test_float_class_id_names_both_target_forms(client):
    body = with_(model_layer_sizes=[3, 3], loss="cross_entropy", target=[1.0])
    problem = assert_problem(
        client.post(URL, json=body), 422, "invalid_tensor", ["body", "target", 0]
    )
    assert problem["detail"] == (
        "expected an integer class id, got 1.0 "
        "(for class probabilities, give a target of the output's shape [1, 3])"
    )


def test_service_is_fine_after_every_bad_request(client):
    for body, *_ in CASES.values():
        client.post(URL, json=body)
    for raw in RAW_BODIES.values():
        client.post(URL, content=raw, headers={"content-type": "application/json"})
    response = client.post(URL, json=LESSON_REQUEST)
    assert response.status_code == 200
    assert client.get("/readyz").status_code == 200


def test_int_beyond_int64_in_class_ids(client):
    body = with_(model_layer_sizes=[3, 2], loss="cross_entropy", target=[2**70])
    assert_problem(client.post(URL, json=body), 422, "invalid_tensor", ["body", "target", 0])


def test_estimates_past_64_bits_are_refused_as_422_not_500(client):
    """Budget estimates are exact Python integers; problems must still serialise them."""
    gpt = {"model": {"kind": "gpt", "preset": "gpt2-small", "emb_dim": 2147483647, "n_heads": 1},
           "input": [[1, 2, 3]], "target": [[1, 2, 3]], "loss": "cross_entropy"}  # fmt: skip
    problem = assert_problem(client.post(URL, json=gpt), 422, "budget_exceeded")
    assert problem["estimate"]["parameters"] > 2**64
    axes = [{"path": f"model.x{i}", "values": list(range(256))} for i in range(8)]
    sweep = {"base": LESSON_REQUEST, "axes": axes}
    problem = assert_problem(client.post("/v1/sweeps", json=sweep), 422, "budget_exceeded")
    assert problem["estimate"]["runs"] == float(256**8)


def test_a_model_without_parameters_is_refused_by_name(client):
    body = {
        "model": {"kind": "sequential", "layers": [{"type": "relu"}, {"type": "max_pool1d",
                                                                      "kernel_size": 2}]},
        "input": {"shape": [2, 3, 8], "distribution": "normal"},
        "loss": "sum",
    }  # fmt: skip
    problem = assert_problem(
        client.post("/v1/diagnostics", json=body), 422, "invalid_request", ["body", "model"]
    )
    assert "no parameters" in problem["detail"]
