"""``search_plan``: the offline search of a pipeline over prompts and seeds, into a ``Plan``.

    from search import search_plan
    plan = search_plan(pipe, ["a cat runs", "a red bird flies"], seeds=[0, 1], num_inference_steps=50,
                       height=480, width=832, num_frames=81)
    save_plan(plan, "plan.json")

Every (prompt, seed) is one greedy search along its own trajectory (``search.greedy``); the runs
are combined by majority (``search.calibration``), and the plan records how consistent they were.
A progress bar counts denoising steps over every run. A plan that comes out (nearly) all Full says
so (``DensePlanWarning``, the text of ``dense_plan_note``) with what to change.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import warnings
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from kernels.limits import default_block_size  # re-exported: its old home
from pipelines.apply import apply_sparse_attention
from pipelines.families import family_of, model_info
from search.calibration import combine_runs
from search.candidates import DEFAULT_CANDIDATES
from search.greedy import DEFAULT_EPSILON, DEFAULT_LAMBDA, PlanSearch
from sparse_vdit.modes import Mode


NEARLY_DENSE = 0.95  # a plan at least this dense saves next to nothing


class DensePlanWarning(UserWarning):
    """A searched plan computes (nearly) all of the attention: ``dense_plan_note`` says what to change."""


def dense_plan_note(plan) -> str | None:
    """What to change when ``plan`` is (nearly) all Full (density >= ``NEARLY_DENSE``), else None."""
    if plan.expected_density < NEARLY_DENSE:
        return None
    return (
        f"the plan is {'all' if plan.expected_density >= 1 else 'nearly all'} Full (attention density "
        f"{plan.expected_density:.3f}): at epsilon {plan.epsilon:g} no candidate mode's error + lambda x cost was "
        f"small enough for {'any' if plan.expected_density >= 1 else 'most'} head. Raise epsilon (larger: sparser, "
        f"e.g. {min(4 * plan.epsilon, 1.0):g}) or lower lambda ({plan.lam:g}); an untrained or tiny model has few "
        "sparse heads"
    )


def search_plan(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    num_inference_steps: int = 50,
    candidates: Sequence[Mode] = DEFAULT_CANDIDATES,
    lam: float = DEFAULT_LAMBDA,
    epsilon: float = DEFAULT_EPSILON,
    block_size: int | None = None,
    cost: str = "auto",
    progress: bool = True,
    **call_kwargs: Any,
):
    """Search a Sparse-vDiT plan for ``pipe`` (a diffusers pipeline of a supported family).

    Args:
        prompts, seeds: every combination is one search run (calibration).
        num_inference_steps: steps of each run (the plan serves other counts, see ``Plan``).
        candidates, lam, epsilon, block_size, cost: as ``search.greedy.PlanSearch`` (block size
            default: per device, ``default_block_size``).
        call_kwargs: passed to ``pipe(...)`` (height, width, num_frames, guidance_scale, ...).

    Returns a ``sparse_vdit.plan.Plan``; warns (``DensePlanWarning``) when it is (nearly) all Full.
    """
    from sparse_vdit.plan import CostTable, Plan

    if not prompts:
        raise ValueError("give at least one prompt to search with")
    transformer = pipe.transformer
    device = transformer.device
    block = block_size or default_block_size(device)
    PlanSearch(candidates, lam=lam, epsilon=epsilon, block_size=block, cost=cost)  # bad arguments fail here, first
    call_kwargs.setdefault("output_type", "latent")  # the search needs the trajectory, not the pixels
    user_callback = call_kwargs.pop("callback_on_step_end", None)
    runs, costs, source, gpu, shape, layout = [], None, None, None, None, None
    combos = list(itertools.product(prompts, seeds))
    bar = tqdm(total=len(combos) * num_inference_steps, desc="plan search", unit="step", disable=not progress)

    def on_step(pipeline, step, timestep, callback_kwargs):
        bar.update(1)
        return user_callback(pipeline, step, timestep, callback_kwargs) if user_callback else {}

    for run, (prompt, seed) in enumerate(combos):
        bar.set_postfix_str(f"run {run + 1}/{len(combos)}: {prompt[:40]!r} seed {seed}")
        method = PlanSearch(candidates, lam=lam, epsilon=epsilon, block_size=block, cost=cost,
                            costs=costs, cost_source=source, gpu=gpu)
        with apply_sparse_attention(pipe, method):
            pipe(prompt, num_inference_steps=num_inference_steps, callback_on_step_end=on_step,
                 generator=torch.Generator(device="cpu").manual_seed(int(seed)), **call_kwargs)
        runs.append(method.step_modes())
        costs, source, gpu = method.costs, method.cost_source, method.gpu
        shape = shape or method.cost_shape
        layout = layout or method.token_layout
    step_modes, report = combine_runs(runs, costs, keys=combos)
    report.update(prompts=list(prompts), seeds=[int(s) for s in seeds])
    bar.close()
    info = model_info(transformer, family_of(transformer))
    plan = Plan.from_step_modes(
        step_modes,
        model=info,
        model_config=dict(info.config),
        token_layout=layout,
        num_steps=len(step_modes),
        block_size=block,
        lam=lam,
        epsilon=epsilon,
        cost=CostTable(source=source, gpu=gpu, shape=shape.describe(),
                       costs=tuple((m, float(c)) for m, c in costs.items())),
        calibration=report,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    note = dense_plan_note(plan)
    if note is not None:
        warnings.warn(note, DensePlanWarning, stacklevel=2)
    return plan

