"""Strict JSON bodies swap only the body parser: FastAPI still binds every other argument."""

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.api import problems
from service.api.strict_json import StrictJSONRoute


class Body(BaseModel):
    value: float


async def scale(factor: Annotated[float, Query()] = 1.0) -> float:
    return factor


async def scaled(body: Body, factor: Annotated[float, Depends(scale)]) -> float:
    return body.value * factor


def app() -> FastAPI:
    router = APIRouter(route_class=StrictJSONRoute)

    @router.post("/items/{item}")
    async def post_item(
        item: int,
        body: Body,
        result: Annotated[float, Depends(scaled)],
        tag: Annotated[str, Header()] = "none",
        note: str | None = None,
    ) -> dict:
        return {"item": item, "value": body.value, "result": result, "tag": tag, "note": note}

    application = FastAPI()
    problems.install(application)
    application.include_router(router)
    return application


def test_path_query_header_and_sub_dependencies_bind_beside_a_strict_body():
    client = TestClient(app())
    response = client.post(
        "/items/7?factor=3&note=hi", json={"value": 2.0}, headers={"tag": "blue"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"item": 7, "value": 2.0, "result": 6.0, "tag": "blue", "note": "hi"}


def test_the_body_is_still_parsed_strictly():
    client = TestClient(app())
    headers = {"content-type": "application/json"}
    nan = client.post("/items/1", content=b'{"value": NaN}', headers=headers)
    assert nan.status_code == 400 and nan.json()["code"] == "invalid_request"
    huge = client.post("/items/1", content=b'{"value": 1e999}', headers=headers)
    assert huge.status_code == 400
    text = client.post("/items/1", content=b'{"value": 1}', headers={"content-type": "text/plain"})
    assert text.status_code == 415 and text.json()["code"] == "unsupported_media_type"
    empty = client.post("/items/1", content=b"", headers=headers)
    assert empty.status_code == 400
    wrong = client.post("/items/x", json={"value": 1})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["loc"] == ["path", "item"]
