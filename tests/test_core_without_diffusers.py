"""The core (``sparse_vdit``: token layout, method protocol, static methods, modes) imports and
works where diffusers cannot be imported, and never imports it (or ``pipelines``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoDiffusers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "diffusers" or name.startswith("diffusers."):
                raise ImportError(f"{name} is made unimportable by this test")
            return None

    sys.meta_path.insert(0, NoDiffusers())
    import sparse_vdit, sparse_vdit.modes, sparse_vdit.protocol, sparse_vdit.static_methods
    from sparse_vdit import TokenLayout
    from sparse_vdit.protocol import ForwardContext, ModelInfo
    from sparse_vdit.static_methods import StaticMaskAttention

    # A static method builds its layout from a forward context, no diffusers anywhere.
    import torch
    layout = TokenLayout(2, 4, 4)
    model = ModelInfo("AnyVideoDiT", 1, 2, 64, ("blocks.0.attn",), "none", (1, 2, 2))
    forward = ForwardContext(0, 0, 0, None, 1.0, None, layout, None, None, 1, torch.device("cpu"), torch.float32, model)
    built = StaticMaskAttention(lambda b, h, q, k: q >= k, block_size=16).begin_forward(forward)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("diffusers", "pipelines"))
    print(json.dumps({"loaded": loaded, "blocks": list(built.shape)}))
    """
)


def test_core_imports_without_diffusers():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], f"the core imported {report['loaded']}"
    assert report["blocks"] == [1, 1, 2, 2]
