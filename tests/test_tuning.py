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


def test_fit_shared_memory():
    """The bf16-tuned configs shrink for fp32 and big head dims, and stay as they are when they fit."""
    limit = 232448  # H200's opt-in shared memory per block
    # bf16, D=64, Q_BLOCK 128: 4 stages of 128-key K and V tiles fit.
    assert tuning.fit_shared_memory((128, 4, 4), block_m=128, head_dim=64, elem_size=2, kv_operands=2,
                                    limit=limit) == (128, 4, 4)
    # fp32 doubles every tile: this config needed 311,832 bytes on the H200 and failed to launch.
    bn, warps, stages = tuning.fit_shared_memory((128, 4, 4), block_m=128, head_dim=64, elem_size=4,
                                                 kv_operands=2, limit=limit)
    assert warps == 4 and 4 * 64 * (128 + 2 * stages * bn) <= 0.85 * limit and stages < 4
    bn, _, stages = tuning.fit_shared_memory((128, 8, 3), block_m=128, head_dim=256, elem_size=4, kv_operands=2,
                                             limit=limit)
    assert 4 * 256 * (128 + 2 * stages * bn) <= 0.85 * limit
