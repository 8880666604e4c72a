"""Kernel tile tables per GPU (kernels.tuning) and the TMA scratch allocator."""

from __future__ import annotations

import json

import pytest
import torch

from kernels import tuning


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    path = tmp_path / "tables.json"
    monkeypatch.setattr(tuning, "TABLE_FILE", path)
    tuning._load.cache_clear()
    yield path
    tuning._load.cache_clear()


def test_shipped_table_covers_the_tuned_keys():
    tuning._load.cache_clear()
    cap, table = tuning.table_for((9, 0))
    assert cap == (9, 0)
    for key in ((128, 128), (128, 64), (64, 128), (64, 64)):
        assert key in table["attention"] and key in table["mass"]
    assert (128,) in table["dense"] and (64,) in table["dense"]


def test_fallback_order(table_file):
    tuning.write_tables((8, 0), "A100", {"attention": {(128, 128): (32, 4, 3)}}, source="test", path=table_file)
    tuning.write_tables((9, 0), "H100", {"attention": {(128, 128): (64, 8, 2)}, "dense": {(64,): (128, 8, 3)}},
                        source="test", path=table_file)
    assert tuning.table_for((9, 0))[0] == (9, 0)
    assert tuning.table_for((10, 0))[0] == (9, 0), "a newer GPU runs the nearest lower capability's table"
    assert tuning.table_for((8, 9))[0] == (8, 0)
    assert tuning.table_for((7, 5))[0] == (8, 0), "below every table: the nearest higher one"
    assert tuning.table_for((9, 0))[1]["attention"][(128, 128)] == (64, 8, 2)


def test_no_table_and_missing_keys_use_generic(table_file, monkeypatch):
    cap, table = tuning.table_for((9, 0))
    assert cap is None and table == {kind: {} for kind in tuning.KINDS}
    monkeypatch.setattr(tuning, "_capability", lambda index: (9, 0))
    assert tuning.config("attention", (128, 128), torch.device("cuda", 0)) == tuning.GENERIC
    tuning.write_tables((9, 0), "H200", {"mass": {(128, 64): (64, 4, 2)}}, source="test", path=table_file)
    assert tuning.config("mass", (128, 64), torch.device("cuda", 0)) == (64, 4, 2)
    assert tuning.config("mass", (64, 64), torch.device("cuda", 0)) == tuning.GENERIC


def test_write_tables_merges(table_file):
    tuning.write_tables((9, 0), "H200", {"attention": {(128, 128): (64, 4, 2)}}, source="first", path=table_file)
    tuning.write_tables((9, 0), "H200", {"attention": {(64, 64): (64, 4, 3)}}, source="second", path=table_file)
    tuning.write_tables((8, 0), "A100", {"dense": {(128,): (64, 4, 2)}}, source="third", path=table_file)
    raw = json.loads(table_file.read_text())
    assert raw["format"] == tuning.FORMAT_VERSION
    assert raw["gpus"]["sm_90"]["attention"] == {"128,128": [64, 4, 2], "64,64": [64, 4, 3]}
    assert raw["gpus"]["sm_90"]["source"] == "second" and "sm_80" in raw["gpus"]
    assert raw["gpus"]["sm_90"]["sources"] == {"attention": "second, H200"}, "each kind's provenance kept"
    with pytest.raises(ValueError, match="unknown table kind"):
        tuning.write_tables((9, 0), "H200", {"attn": {}}, source="x", path=table_file)


def test_overrides_win_and_clear(monkeypatch):
    monkeypatch.setattr(tuning, "_capability", lambda index: (9, 0))
    tuning.override("dense", (128,), (32, 4, 1))
    try:
        assert tuning.config("dense", (128,), torch.device("cuda", 0)) == (32, 4, 1)
    finally:
        tuning.clear_overrides()
    assert tuning.config("dense", (128,), torch.device("cuda", 0)) != (32, 4, 1)


def test_tma_allocator_keeps_the_users():
    """Our TMA scratch allocator is installed only where none is set: a user's stays."""
    import contextvars

    from triton.runtime import _allocation

    import kernels.attention as attention

    def run(install_user: bool):
        def user(size, alignment, stream):
            return torch.empty(size, dtype=torch.int8)

        _allocation.set_allocator(_allocation.NullAllocator())  # whatever other tests installed
        if install_user:
            _allocation.set_allocator(user)
        attention._ensure_allocator()
        return _allocation._allocator.get(), user

    got, _ = contextvars.copy_context().run(run, False)
    assert got is attention._tma_scratch
    got, user = contextvars.copy_context().run(run, True)
    assert got is user


def test_configs_that_do_not_fit_shrink_and_are_remembered(monkeypatch):
    """A table config too big for the GPU's shared memory (bf16-tuned tiles with fp32 inputs:
    311,832 bytes asked of the H200's 232,448) shrinks until Triton can launch it, and the launch
    after that starts from the config that fit."""
    import contextlib
    import types

    from triton.runtime.errors import OutOfResources

    import kernels.attention as attention

    monkeypatch.setattr(tuning, "_capability", lambda index: (9, 0))
    monkeypatch.setattr(tuning, "_SHRUNK", {})
    monkeypatch.setattr(attention, "interpreting", lambda: False)
    monkeypatch.setattr(attention, "_on_device", lambda t: contextlib.nullcontext())
    q = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=torch.float32)
    tried = []

    def launch(block_n, warps, stages):
        tried.append((block_n, warps, stages))
        if block_n * stages > 128:
            raise OutOfResources(311832, 232448, "shared memory")

    key = (64, 128)
    table_cfg = tuning.config("attention", key, q.device)
    assert table_cfg[0] * table_cfg[2] > 128, "the shipped config for (64, 128) is the one that failed"
    attention._launch_fitting("attention", key, q, launch)
    fitted = tried[-1]
    assert tried[0] == table_cfg and fitted[0] * fitted[2] <= 128 and fitted[1] == table_cfg[1]
    tried.clear()
    attention._launch_fitting("attention", key, q, launch)
    assert tried == [fitted], "the next launch starts from the config that fit"
    q16 = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=torch.bfloat16)
    assert tuning.config("attention", key, q16.device, (q16.dtype,)) == table_cfg, "bf16 keeps the table config"

    def never(block_n, warps, stages):
        raise OutOfResources(1 << 30, 232448, "shared memory")

    with pytest.raises(OutOfResources):
        attention._launch_fitting("mass", (64, 64), q, never)
    assert tuning.shrink((16, 4, 1)) is None
