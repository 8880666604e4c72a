"""``sparse-vdit check`` (sparse_vdit.cli.check.run_selfcheck): the kernels against the float64
reference, and precision="fp8" against its twin where it can run (here: the Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

import sparse_vdit.cli.check as check


@pytest.mark.parametrize("interpret", ["0", "1"], ids=["fallback", "interpreter"])
def test_check_passes(monkeypatch, capsys, interpret):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    assert check.run_selfcheck(2, 4, 8, 2, 64) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("OK")
    if interpret == "1" and not torch.cuda.is_available():
        assert "fp8 (vs its twin)" in out and "within the quantisation bound" in out
    elif not torch.cuda.is_available():
        assert "precision='fp8': skipped: precision='fp8' runs only in the Triton kernels" in out


def test_check_fails_on_a_wrong_fp8_output(monkeypatch, capsys):
    """The FP8 row can fail: an output 2% off its twin is outside the quantisation bound."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if torch.cuda.is_available():
        pytest.skip("the FP8 row's device path is the GPU's; this checks the interpreter's")
    real = check.block_sparse_attention

    def skewed(q, k, v, layout, **kwargs):
        out = real(q, k, v, layout, **kwargs)
        return out * 1.02 if kwargs.get("precision") == "fp8" else out

    monkeypatch.setattr(check, "block_sparse_attention", skewed)
    assert check.run_selfcheck(2, 4, 8, 2, 64) == 1
    out = capsys.readouterr().out
    assert "OUTSIDE the quantisation bound" in out and "FAILED: precision='fp8'" in out
