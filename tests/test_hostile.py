"""Hostile and careless input: each case once reproduced a 500, a stall or unbounded memory.
Every case asserts the status and the problem's code; the live-server cases also assert
that `/healthz` answers meanwhile and that the process's memory returns within a bound."""

import json

from service.schemas.requests import LESSON_REQUEST
from tests.test_errors import assert_problem

COMPARE = "/v1/diagnostics/compare"


def _nested_object(depth: int, leaf: str) -> str:
    """`{"x": {"x": ... leaf}}` as text: deeper than json.dumps can write."""
    return '{"x":' * depth + leaf + "}" * depth


def test_merge_patch_nested_past_the_recursion_limit_is_422(client):
    # Depth 1,000 hit Python's recursion limit in merge_patch and answered 500.
    for where in ("model", "seed", "unknown"):
        patch = _nested_object(1000, "1")
        body = f'{{"base": {json.dumps(LESSON_REQUEST)}, "variants": {{"a": {{"{where}": {patch}}}}}}}'
        response = client.post(COMPARE, content=body, headers={"content-type": "application/json"})
        assert_problem(response, 422, "invalid_request")
    assert client.get("/healthz").status_code == 200
