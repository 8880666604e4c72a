"""A plan as text (``sparse-vdit plan show``): a header, then per step range a line per layer with
its mode counts and density.

    model        WanTransformer3DModel: 40 layers x 40 heads x 128 (config 694f208a624e)
    ...
    steps 0-4 (5 steps): density 0.118
      layer  0  density 0.105  20 full, 2 skip, 10 diagonal(4), 8 multi_diagonal(2,all)
      layer  1  dense          40 full
"""

from __future__ import annotations

from collections import Counter

from sparse_vdit.modes import MODES, Full, Mode, mode_to_dict
from sparse_vdit.plan import Plan

__all__ = ["format_plan", "mode_label"]


def mode_label(mode: Mode) -> str:
    """Short label: "full", "diagonal(4)", "multi_diagonal(2,all)", "vertical_stripe([0,-1],2)"."""
    params = {k: v for k, v in mode_to_dict(mode).items() if k != "mode"}
    if not params:
        return mode.name
    shown = ("all" if v is None else "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v) for v in params.values())
    return f"{mode.name}({','.join(shown)})"


def _mode_counts(modes: tuple[Mode, ...]) -> str:
    counts = Counter(modes)
    ordered = sorted(counts, key=lambda m: (MODES.index(type(m)), mode_label(m)))
    return ", ".join(f"{counts[m]} {mode_label(m)}" for m in ordered)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _header(plan: Plan, source: str | None) -> list[tuple[str, str]]:
    model = plan.model
    fingerprint = f" (config {model.config_fingerprint[:12]})" if model.config_fingerprint else ""
    cost = plan.cost
    rows = [
        ("model", f"{model.family}: {model.num_layers} layers x {model.num_heads} heads x {model.head_dim}{fingerprint}"),
        ("searched at", f"{plan.token_layout.describe()}, block {plan.block_size}, {plan.num_steps} steps ({_count(len(plan.steps), 'range')})"),
        ("search", f"lambda {plan.lam:g}, epsilon {plan.epsilon:g}"),
        ("cost", f"{cost.source}" + (f" on {cost.gpu}" if cost.gpu else "") + (f" ({cost.shape})" if cost.shape else "")),
        ("expected", f"attention density {plan.expected_density:.3f}, predicted attention speedup {plan.predicted_speedup:.2f}x"),
    ]
    calibration = plan.calibration or {}
    if "consistency" in calibration:
        runs = ", ".join(_count(len(calibration[k]), k[:-1]) for k in ("prompts", "seeds")
                         if isinstance(calibration.get(k), list))
        method = calibration.get("method")
        detail = ", ".join(str(x) for x in (method, runs) if x)
        value = calibration["consistency"]
        shown = f"{value:.1%}" if isinstance(value, float) else str(value)
        extra = [f"{label} {calibration[key]:.1%}" for key, label in (("kind_agreement", "same kind"),
                 ("unanimous", "unanimous"), ("agreement_same_prompt", "two runs of one prompt agree on"),
                 ("agreement_other_prompt", "two runs of other prompts agree on")) if isinstance(calibration.get(key), float)]
        rows.append(("calibration", f"consistency {shown}" + "".join(f", {e}" for e in extra)
                     + (f" ({detail})" if detail else "")))
    if plan.created:
        rows.append(("created", plan.created))
    if source:
        rows.insert(0, ("plan", source))
    return rows


def format_plan(plan: Plan, source: str | None = None) -> str:
    """The plan as a header and a table of modes per step range and layer, with densities."""
    rows = _header(plan, source)
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    densities = plan.mode_densities()
    digits = len(str(plan.model.num_layers - 1))
    for r in plan.steps:
        layer_density = [sum(densities[m] for m in layer) / len(layer) for layer in r.layers]
        steps = f"step {r.start}" if r.num_steps == 1 else f"steps {r.start}-{r.end - 1}"
        lines.append("")
        lines.append(f"{steps} ({_count(r.num_steps, 'step')}): density {sum(layer_density) / len(layer_density):.3f}")
        for i, (layer, density) in enumerate(zip(r.layers, layer_density)):
            how = "dense        " if all(isinstance(m, Full) for m in layer) else f"density {density:.3f}"
            lines.append(f"  layer {i:>{digits}}  {how}  {_mode_counts(layer)}")
    return "\n".join(lines)
