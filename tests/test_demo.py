"""``sparse-vdit demo`` as a new user runs it: a fresh process on the CPU, the proxy model (untrained
here: it must say so), a plan search, dense / plan / AdaSpa, the explanations, the videos; no
casting warning and no warning inside the progress bars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU wording")
def test_demo_as_a_new_user_sees_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the user's CPU path: the fallback
    done = subprocess.run(
        [sys.executable, "-m", "sparse_vdit.cli", "demo", "--steps", "3", "--search-steps", "2",
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert "should be kept in float32" not in out + err  # diffusers' casting warning
    assert "Warning" not in err, err[-2000:]  # nothing lands in (or between) the progress bars
    from pipelines.proxy import PROXY_CHECKPOINT

    if not PROXY_CHECKPOINT.exists():
        assert "proxy checkpoint not trained yet: random weights, quality numbers mean nothing" in out
    assert "PyTorch fallback path" in out and "not of the GPU kernels" in out
    for text in ("1/2 searching a plan", "2/2 generating", "dense ", "plan (eps=0.3)", "adaspa (s=0.8)",
                 "fraction of the attention computed", "> 30 near-identical, 20-30 visible differences", "SSIM"):
        assert text in out, text
    assert out.index("NOTE: no CUDA device") < out.index("1/2 searching")  # said before any bar starts
    assert "evaluate:" in err and "plan search:" in err  # the progress bars
    from pipelines.videos import slug
    from pipelines.loading import PROXY_CPU_DEFAULTS

    videos = tmp_path / "out" / "videos" / slug(PROXY_CPU_DEFAULTS.prompts[0]) / "seed0"
    assert {p.name for p in videos.iterdir()} == {"dense.mp4", "plan_eps=0.3.mp4", "adaspa_s=0.8.mp4"}
    import json

    summary = json.loads((tmp_path / "out" / "report.json").read_text())["summary"]
    adaspa = next(row for row in summary if row["method"] == "adaspa")
    assert ("why AdaSpa computes this much" in out) == (adaspa["density"] >= 0.5), adaspa  # said when it looks dense
