"""Start-up loading of highdicom's standard tables (:mod:`pacs_node.results.warmup`)."""
from __future__ import annotations

import importlib

import pytest

from pacs_node.results.warmup import STANDARD_TABLE_LOADERS, load_standard_tables


def test_the_standard_tables_are_cached_after_loading() -> None:
    module = importlib.import_module("highdicom._standard_utils")
    for name in STANDARD_TABLE_LOADERS:  # earlier tests may have loaded them already
        getattr(module, name).cache_clear()
        assert getattr(module, name).cache_info().currsize == 0, name
    assert load_standard_tables() == len(STANDARD_TABLE_LOADERS)
    for name in STANDARD_TABLE_LOADERS:
        assert getattr(module, name).cache_info().currsize == 1, name


def test_a_highdicom_without_the_loaders_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("highdicom._standard_utils")
    for name in STANDARD_TABLE_LOADERS:
        monkeypatch.delattr(module, name)
    assert load_standard_tables() == 0
