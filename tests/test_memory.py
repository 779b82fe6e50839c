"""Malloc arenas: the setting reaches glibc where there is one. The garbage collector: the
objects of a process's first start-up are frozen, once."""

import ctypes.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from service.workers.memory import limit_malloc_arenas


def test_zero_leaves_glibc_alone():
    assert limit_malloc_arenas(0) is False


@pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.libc_ver()[0] != "glibc"
    or not ctypes.util.find_library("c"),
    reason="glibc only",
)
def test_glibc_accepts_the_limit():
    assert limit_malloc_arenas(1) is True


# In a process of its own: the collector's state is the process's.
FREEZE_PROBE = """
import gc, json
from fastapi.testclient import TestClient
from service.main import create_app
from tests.conftest import make_settings
counts = []
for freeze in (False, True, True):
    with TestClient(create_app(make_settings(gc_freeze=freeze))) as client:
        assert client.get("/healthz").status_code == 200
        counts.append(gc.get_freeze_count())
    counts.append(gc.get_freeze_count())
print(json.dumps(counts))
"""


def test_start_up_objects_are_frozen_once_per_process():
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    off, off_after, on, on_after, again, again_after = json.loads(done.stdout.splitlines()[-1])
    assert off == off_after == 0  # GRADIAG_GC_FREEZE=false
    assert on > 10_000  # torch, FastAPI, pydantic, the app
    # Frozen objects leave the count only when they are freed: a thaw would empty it, a
    # second freeze would add the second app's objects.
    assert on_after > on // 2  # for good, not thawed when the app stops
    assert again_after <= again <= on_after  # a second app of the process freezes nothing
