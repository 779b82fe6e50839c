"""Malloc arenas: the setting reaches glibc where there is one."""

import ctypes.util
import platform

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
