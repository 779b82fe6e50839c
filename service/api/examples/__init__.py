"""Real answers for the OpenAPI document's examples: the lesson's report and its compare
(tests/test_openapi.py checks they equal what the service answers now)."""

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def load(name: str) -> Any:
    return json.loads((HERE / f"{name}.json").read_text())
