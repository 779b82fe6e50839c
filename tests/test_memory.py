"""Malloc arenas: the setting reaches glibc where there is one. The garbage collector: the
objects of start-up are frozen while the app lives, and thawed after."""

import ctypes.util
import gc
import platform

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.workers.memory import limit_malloc_arenas
from tests.conftest import make_settings


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


def test_start_up_objects_are_frozen_while_the_app_lives():
    gc.unfreeze()  # what an earlier app of this test process froze
    with TestClient(create_app(make_settings(gc_freeze=True))) as client:
        assert gc.get_freeze_count() > 10_000  # torch, FastAPI, pydantic, the app
        assert client.get("/healthz").status_code == 200
    assert gc.get_freeze_count() == 0  # thawed at shut-down, collectable again


def test_the_freeze_can_be_turned_off():
    gc.unfreeze()
    with TestClient(create_app(make_settings(gc_freeze=False))):
        assert gc.get_freeze_count() == 0
