"""Sweeps: the cartesian product of axes; runs equal the same requests made one by one."""

import copy
import statistics

from service.schemas.requests import LESSON_REQUEST
from tests.conftest import close
from tests.test_errors import assert_problem

URL = "/v1/sweeps"
DEPTHS = [[3, 3, 1], [3, 3, 3, 3, 1], [3, 3, 3, 3, 3, 3, 1]]
SEEDS = [1, 2, 3, 4, 5]


def depth_sweep():
    return {
        "base": LESSON_REQUEST,
        "axes": [
            {"path": "model.layer_sizes", "values": DEPTHS},
            {"path": "model.shortcut", "values": [False, True]},
            {"path": "seed", "values": SEEDS},
        ],
    }


def one_by_one(client, sizes, shortcut, seed):
    request = copy.deepcopy(LESSON_REQUEST)
    request["model"].update(layer_sizes=sizes, shortcut=shortcut)
    request["seed"] = seed
    return client.post("/v1/diagnostics", json=request).json()


def test_sweep_runs_equal_single_requests(client):
    response = client.post(URL, json=depth_sweep())
    assert response.status_code == 200, response.text
    report = response.json()
    assert len(report["runs"]) == len(DEPTHS) * 2 * len(SEEDS)
    for run in report["runs"]:
        axes = run["axes"]
        single = one_by_one(client, axes["model.layer_sizes"], axes["model.shortcut"], axes["seed"])
        assert run["loss"] == single["loss"]
        assert run["verdict"] == single["diagnosis"]["verdict"]
        assert [p["grad_mean_abs"] for p in run["parameters"]] == [
            p["grad"]["mean_abs"] for p in single["parameters"]
        ]
        assert [layer["output_grad_mean_abs"] for layer in run["layers"]] == [
            layer["output_grad"]["mean_abs"] for layer in single["layers"]
        ]


def test_across_seeds_mean_and_std_per_layer(client):
    report = client.post(URL, json=depth_sweep()).json()
    groups = report["across_seeds"]
    assert len(groups) == len(DEPTHS) * 2
    for group in groups:
        assert group["seeds"] == SEEDS
        sizes, shortcut = group["axes"]["model.layer_sizes"], group["axes"]["model.shortcut"]
        runs = [
            r
            for r in report["runs"]
            if r["axes"]["model.layer_sizes"] == sizes and r["axes"]["model.shortcut"] == shortcut
        ]
        first = [r["layers"][0]["output_grad_mean_abs"] for r in runs]
        layer0 = group["layers"][0]["output_grad_mean_abs"]
        assert layer0["n"] == 5
        assert close(layer0["mean"], statistics.fmean(first))
        assert close(layer0["std"], statistics.stdev(first))
    # The lesson generalised: deeper plain networks lose the gradient at layer 0, shortcuts keep it.
    deep = {
        (g["axes"]["model.shortcut"]): g
        for g in groups
        if g["axes"]["model.layer_sizes"] == DEPTHS[-1]
    }
    assert (
        deep[True]["first_to_last_ratio"]["mean"] > 10 * deep[False]["first_to_last_ratio"]["mean"]
    )


def test_sweep_without_seed_axis_has_no_seed_statistics(client):
    body = {
        "base": LESSON_REQUEST,
        "axes": [{"path": "model.activation", "values": ["relu", "tanh"]}],
    }
    report = client.post(URL, json=body).json()
    assert report["across_seeds"] is None
    assert [r["axes"] for r in report["runs"]] == [
        {"model.activation": "relu"},
        {"model.activation": "tanh"},
    ]


def test_sweep_errors(client, make_client):
    bad_value = {
        "base": LESSON_REQUEST,
        "axes": [{"path": "model.activation", "values": ["relu", "nope"]}],
    }
    assert_problem(
        client.post(URL, json=bad_value), 422, "invalid_request", ["body", "axes", 0, "values", 1]
    )
    bad_shape = {
        "base": LESSON_REQUEST,
        "axes": [{"path": "model.layer_sizes", "values": [[4, 1]]}],
    }
    assert_problem(
        client.post(URL, json=bad_shape), 422, "shape_mismatch", ["body", "base", "input"]
    )
    bad_path = {"base": LESSON_REQUEST, "axes": [{"path": "model.layer_sizes.9", "values": [3]}]}
    assert_problem(
        client.post(URL, json=bad_path), 422, "invalid_request", ["body", "axes", 0, "path"]
    )
    syntax = {"base": LESSON_REQUEST, "axes": [{"path": "model..x", "values": [3]}]}
    assert_problem(
        client.post(URL, json=syntax), 422, "invalid_request", ["body", "axes", 0, "path"]
    )
    twice = {
        "base": LESSON_REQUEST,
        "axes": [{"path": "seed", "values": [1]}, {"path": "seed", "values": [2]}],
    }
    assert_problem(client.post(URL, json=twice), 422, "invalid_request", ["body", "axes"])
    small = make_client(limits={"max_sweep_runs": 4})
    problem = assert_problem(small.post(URL, json=depth_sweep()), 422, "budget_exceeded")
    assert problem["estimate"] == {"runs": 30} and problem["limit"] == {"runs": 4}
    flops = make_client(limits={"max_flops": 2_000})
    problem = assert_problem(flops.post(URL, json=depth_sweep()), 422, "budget_exceeded")
    assert problem["estimate"]["flops"] > 2_000  # each run fits; together they do not


def test_paths_through_values_are_refused(client):
    # Found by schemathesis: a later axis walks through what an earlier one set to a value.
    axes = [{"path": "model.a", "values": [None]}, {"path": "model.a.b", "values": [1]}]
    body = {"base": LESSON_REQUEST, "axes": axes}
    assert_problem(client.post(URL, json=body), 422, "invalid_request", ["body", "axes", 1, "path"])
