"""AdaSpaConfig: the paper's defaults, the step schedule for any number of steps, a clear error for
every configuration AdaSpa cannot run, at construction and when applied; adaspa needs no diffusers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import adaspa.config as config_module
from adaspa import AdaSpaConfig, AdaSpaState
from adaspa.schedule import CACHED_SEARCH, DENSE, FIRST_SEARCH, SPARSE, round_half_up
from pipelines import apply_sparse_attention, tiny
from sparse_vdit.protocol import ForwardContext, ModelInfo
from sparse_vdit.token_layout import TokenLayout

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers():
    cfg = AdaSpaConfig()
    assert (cfg.sparsity, cfg.block_size, cfg.warmup_steps, cfg.search_steps) == (0.8, 64, 10, (10, 30))
    assert (cfg.schedule_steps, cfg.recall_threshold, cfg.tiers) == (50, 0.8, True)
    phases = [cfg.schedule(50).phase(i) for i in range(50)]
    assert phases == [DENSE] * 10 + [FIRST_SEARCH] + [SPARSE] * 19 + [CACHED_SEARCH] + [SPARSE] * 19
    assert isinstance(cfg.new_state(), AdaSpaState) and cfg.new_state() is not cfg.new_state()
    assert hash(cfg) == hash(AdaSpaConfig()) and cfg == AdaSpaConfig()


@pytest.mark.parametrize(
    "num_steps, warmup, search",
    [(50, 10, (10, 30)), (25, 5, (5, 15)), (100, 20, (20, 60)), (20, 4, (4, 12)), (30, 6, (6, 18)),
     (4, 1, (1, 2)), (3, 1, (1, 2)), (2, 0, (0, 1)), (1, 0, (0,))],
)
def test_schedule_scales_with_the_number_of_steps(num_steps, warmup, search):
    schedule = AdaSpaConfig().schedule(num_steps)
    assert (schedule.warmup_steps, schedule.search_steps) == (warmup, search)
    assert schedule.search_steps[0] == schedule.warmup_steps


def test_round_half_up_is_not_bankers_rounding():
    assert [round_half_up(n, 2) for n in (1, 3, 5)] == [1, 2, 3]  # 0.5, 1.5, 2.5 round up
    assert round_half_up(10 * 5, 20) == 3  # 2.5


def test_explicit_steps_are_used_as_given():
    cfg = AdaSpaConfig(warmup_steps=2, search_steps=[7, 2, 7, 4], schedule_steps=None)
    assert cfg.search_steps == (2, 4, 7)
    assert cfg.schedule(30).search_steps == (2, 4, 7)
    assert cfg.schedule(6).search_steps == (2, 4), "search steps past the generation are dropped"
    assert AdaSpaConfig(warmup_steps=3, search_steps=3).search_steps == (3,)


def test_lse_is_kept_until_the_last_search():
    cfg = AdaSpaConfig()
    keep = {i: cfg.plan(i, 50, None).keep_lse for i in (10, 20, 29, 30, 40)}
    assert keep == {10: True, 20: True, 29: True, 30: False, 40: False}
    assert not AdaSpaConfig(search_steps=(10,)).plan(10, 50, None).keep_lse, "one search: no LSE cached"


BAD = {
    "sparsity 1": (dict(sparsity=1.0), "sparsity must be a number in \\[0, 1\\)"),
    "sparsity < 0": (dict(sparsity=-0.1), "sparsity must be a number in \\[0, 1\\)"),
    "sparsity nan": (dict(sparsity=float("nan")), "sparsity must be a number"),
    "sparsity bool": (dict(sparsity=True), "sparsity must be a number"),
    "block 48": (dict(block_size=48), "block_size=48\\) is not served by the kernels: use 64 or 128"),
    "block 256": (dict(block_size=256), "not served by the kernels"),
    "search before warm-up": (dict(warmup_steps=10, search_steps=(5, 30)), "search step 5 comes before the end of warm-up"),
    "first search after warm-up": (dict(warmup_steps=10, search_steps=(12, 30)), "must end the warm-up"),
    "no search step": (dict(search_steps=()), "give one or more step indices"),
    "negative search step": (dict(warmup_steps=0, search_steps=(0, -3)), "step indices >= 0"),
    "search step past schedule": (dict(search_steps=(10, 50)), "past the schedule's 50 steps"),
    "negative warm-up": (dict(warmup_steps=-1), "warmup_steps=-1"),
    "schedule_steps 0": (dict(schedule_steps=0), "schedule_steps=0"),
    "threshold > 1": (dict(recall_threshold=1.5), "a number in \\[0, 1\\]"),
    "threshold < 0": (dict(recall_threshold=-0.2), "a number in \\[0, 1\\]"),
    "tiers not bool": (dict(tiers="yes"), "tiers='yes'"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_configuration_is_refused_at_apply_time(name):
    kwargs, message = BAD[name]
    model = tiny.tiny_wan_transformer(num_layers=1)
    with pytest.raises((ValueError, TypeError), match=message):
        apply_sparse_attention(model, AdaSpaConfig(**kwargs))
    assert not any("Sparse" in type(p).__name__ for p in model.attn_processors.values())


def test_replace_and_validate_check_again():
    with pytest.raises(ValueError, match="sparsity"):
        dataclasses.replace(AdaSpaConfig(), sparsity=1.2)
    cfg = AdaSpaConfig()
    object.__setattr__(cfg, "block_size", 100)  # bypassing the constructor
    info = ModelInfo("WanTransformer3DModel", 1, 2, 64, ("blocks.0.attn1",), "none", (1, 2, 2))
    with pytest.raises(ValueError, match="block_size=100"):
        cfg.validate(info)
    with pytest.raises(ValueError, match="FullAttention"):
        AdaSpaConfig().validate(dataclasses.replace(info, head_dim=8))


def _forward(step, num_steps, dtype=torch.float32):
    layout = TokenLayout(2, 4, 4)
    info = ModelInfo("AnyVideoDiT", 1, 2, 64, ("blocks.0.attn",), "none", (1, 2, 2))
    return ForwardContext(0, step, 0, None, 1.0, num_steps, layout, None, None, 1, torch.device("cpu"), dtype, info)


def test_unknown_number_of_steps_assumes_the_schedules_and_warns_once(monkeypatch):
    monkeypatch.setattr(config_module, "_warned", set())
    cfg = AdaSpaConfig(block_size=16)
    with pytest.warns(UserWarning, match="assuming 50"):
        assert cfg.begin_forward(_forward(10, None)).phase == FIRST_SEARCH
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cfg.begin_forward(_forward(30, None)).phase == CACHED_SEARCH
        explicit = AdaSpaConfig(block_size=16, warmup_steps=1, search_steps=(1,), schedule_steps=None)
        assert explicit.begin_forward(_forward(1, None)).phase == FIRST_SEARCH


def test_unsupported_dtype_is_refused_after_warm_up_only():
    cfg = AdaSpaConfig(block_size=16)
    assert cfg.begin_forward(_forward(3, 50, torch.float64)).phase == DENSE
    with pytest.raises(ValueError, match="pipe.to\\(torch.bfloat16\\)"):
        cfg.begin_forward(_forward(10, 50, torch.float64))


NO_DIFFUSERS = """
import json, sys
sys.modules["diffusers"] = None  # any import of diffusers now raises ImportError
import torch
from adaspa import AdaSpaConfig, AdaSpaState, adaspa_attention
q, k, v = torch.randn(3, 1, 2, 40, 64).unbind(0)
cfg = AdaSpaConfig(block_size=16, warmup_steps=0, search_steps=(0,), schedule_steps=None)
state = AdaSpaState()
shapes = [list(adaspa_attention(q, k, v, state, step=step, config=cfg).shape) for step in range(2)]
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("diffusers", "pipelines"))
print(json.dumps({"loaded": loaded, "shapes": shapes}))
"""


def test_adaspa_runs_without_diffusers():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", NO_DIFFUSERS], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"loaded": [], "shapes": [[1, 2, 40, 64]] * 2}


def test_rational_settings_are_taken_as_floats():
    """A Fraction (or a numpy float) is a number in [0, 1) and must run, not fail at the first search."""
    from fractions import Fraction

    cfg = AdaSpaConfig(sparsity=Fraction(1, 2), recall_threshold=Fraction(3, 4), block_size=16)
    assert type(cfg.sparsity) is float and cfg.sparsity == 0.5
    assert type(cfg.recall_threshold) is float and cfg.recall_threshold == 0.75
    state = AdaSpaState()
    q, k, v = torch.randn(3, 1, 2, 40, 64, generator=torch.Generator().manual_seed(0)).unbind(0)
    from adaspa import adaspa_attention

    explicit = dataclasses.replace(cfg, warmup_steps=0, search_steps=(0,), schedule_steps=None)
    assert adaspa_attention(q, k, v, state, step=0, config=explicit).shape == q.shape
    assert adaspa_attention(q, k, v, state, step=1, config=explicit).shape == q.shape


def test_a_schedule_dense_at_every_step_says_so_once(monkeypatch):
    monkeypatch.setattr(config_module, "_warned", set())
    cfg = AdaSpaConfig(block_size=16, warmup_steps=10, search_steps=(10,), schedule_steps=None)
    with pytest.warns(UserWarning, match=r"AdaSpa: a 8-step generation .* no search step: every step runs dense"):
        assert cfg.begin_forward(_forward(0, 8)).phase == DENSE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cfg.begin_forward(_forward(1, 8)).phase == DENSE
        assert AdaSpaConfig(block_size=16).begin_forward(_forward(0, 8)).phase == DENSE  # searches at step 2


def test_the_method_and_its_old_name_are_one_class():
    from adaspa import AdaSpaAttention

    assert AdaSpaConfig is AdaSpaAttention and AdaSpaAttention().validate is not None
    with pytest.raises(ValueError, match=r"AdaSpaAttention\(sparsity=2\.0\)"):
        AdaSpaConfig(sparsity=2)
