"""Attention statistics of the proxy: does it have the structure the sparse modes exploit?

    python -m pipelines.proxy.attention_stats [--checkpoint PATH | --random] [--device cuda]

Runs the pipeline on a few prompts with a recording method installed through sparse-vdit's own
processors (``apply_sparse_attention``: the method sees every self-attention call's q and k after
norms and RoPE, computes statistics and returns None, so the attention itself stays dense and the
video is the stock one). Per call and head, in float32, on query rows ``i * stride + i % stride``
(at most ``MAX_QUERY_ROWS`` rows: 4,096 on a GPU, 1,024 on the CPU, unless ``query_stride`` is
given; the offset keeps a stride from sampling one column only):

- the attention mass inside each mode's element pattern (``sparse_vdit.modes.mode_mask_mod``),
  averaged over rows: ``Diagonal(1)`` (own frame, +-1 latent row), ``MultiDiagonal(1, None)``
  (+-1 latent row in every frame) and ``VerticalStripe((0,), 1)`` (all tokens of frame 0);
- those as a partition that sums to 1 per head: diagonal = mass in Diagonal; temporal = mass in
  MultiDiagonal outside Diagonal; stripe = mass in VerticalStripe outside both; other = the rest;
- the entropy of the attention rows, divided by log(S) (1 = uniform).

Averaged over the recorded calls (prompts, recorded steps, both CFG branches), each head is then
classified by the sparsest pattern (lowest element density first: Diagonal, VerticalStripe,
MultiDiagonal) that holds at least ``MASS_THRESHOLD`` (0.5) of its mass and at least
``MIN_LIFT`` (2) times what uniform attention would put there (the pattern's density; this keeps
a pattern that covers most keys of a tiny video from claiming every head): "diagonal",
"stripe" or "temporal"; a head no pattern claims is "diffuse" (expected to need Full).
On random weights nearly every head is diffuse.

The structure target (issue 16) asks more of a head: at least ``TARGET_MASS`` (0.6) of its mass
inside one mode's pattern of element density at most ``TARGET_DENSITY`` (0.3). Each head is
measured against every mode of ``CANDIDATES`` (local: ``Diagonal`` of 1 to 8 rows; temporal:
``MultiDiagonal`` bands over 1, 2 or all frames; stripe-like: ``VerticalStripe`` of the first or
first and last frame) and takes the sparsest that qualifies ("target" columns of the table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field

import torch

from sparse_vdit.modes import Diagonal, MultiDiagonal, VerticalStripe, mode_mask_mod, mode_to_dict
from sparse_vdit.protocol import AttentionCall, AttentionMethod
from sparse_vdit.token_layout import TokenLayout

__all__ = [
    "PATTERNS",
    "CANDIDATES",
    "TARGET_MASS",
    "TARGET_DENSITY",
    "HEAD_CLASSES",
    "MASS_THRESHOLD",
    "MIN_LIFT",
    "AttentionRecorder",
    "AttentionStats",
    "attention_statistics",
    "head_mass",
    "main",
]

# The patterns, sparsest first on the proxy's 9 x 16 x 24 grid (element densities 2%, 11%, 18%).
PATTERNS = {"diagonal": Diagonal(1), "stripe": VerticalStripe((0,), 1), "temporal": MultiDiagonal(1, None)}
PARTITION = ("diagonal", "temporal", "stripe", "other")
HEAD_CLASSES = ("diagonal", "temporal", "stripe", "diffuse")
MASS_THRESHOLD = 0.5
MIN_LIFT = 2.0
# The structure target's candidates, by kind (a head takes the sparsest mode that qualifies).
CANDIDATES = {
    "diagonal": (Diagonal(1), Diagonal(2), Diagonal(4), Diagonal(8)),
    "temporal": (MultiDiagonal(1, 1), MultiDiagonal(2, 1), MultiDiagonal(1, 2), MultiDiagonal(1, None),
                 MultiDiagonal(2, None), MultiDiagonal(4, None)),
    "stripe": (VerticalStripe((0,), 1), VerticalStripe((0, -1), 1), VerticalStripe((0,), 2)),
}
TARGET_MASS, TARGET_DENSITY = 0.6, 0.3
MAX_QUERY_ROWS = {"cuda": 4096, "cpu": 1024}  # by device type; others as the CPU
DEFAULT_PROMPTS = (
    "a red circle moves right over grass", "a blue square rotates over clouds",
    "camera pans right over an astronaut", "camera zooms in over a cat",
)


def query_rows(seq_len: int, stride: int | None = None, device_type: str = "cpu") -> torch.Tensor:
    """Query rows sampled: ``i * stride + i % stride`` below ``seq_len``; stride None: the smallest
    that keeps at most ``MAX_QUERY_ROWS[device_type]`` rows (3,456 rows: all on a GPU,
    every 4th on the CPU)."""
    if stride is None:
        stride = max(1, math.ceil(seq_len / MAX_QUERY_ROWS.get(device_type, MAX_QUERY_ROWS["cpu"])))
    i = torch.arange(math.ceil(seq_len / stride))
    rows = i * stride + i % stride
    return rows[rows < seq_len]


def _candidate_list() -> list[tuple[str, object]]:
    return [(kind, mode) for kind, modes in CANDIDATES.items() for mode in modes]


@dataclass(frozen=True)
class _Masks:
    """Element masks on the sampled rows, [4 + C, R, S] bool: the three PATTERNS in order, the
    stripe outside the temporal band, then the C modes of ``CANDIDATES``; the patterns' and the
    candidates' densities (share of the R x S entries)."""

    rows: torch.Tensor
    patterns: torch.Tensor
    density: dict
    candidate_density: tuple = ()


def _masks(layout: TokenLayout, rows: torch.Tensor, device) -> _Masks:
    q = rows.to(device)[:, None]
    kv = torch.arange(layout.seq_len, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)

    def element_mask(mode):
        return mode_mask_mod(mode, layout)(zero, zero, q, kv)

    patterns = {name: element_mask(mode) for name, mode in PATTERNS.items()}
    density = {name: float(m.float().mean()) for name, m in patterns.items()}
    candidates = [element_mask(mode) for _, mode in _candidate_list()]
    stacked = torch.stack([*patterns.values(), patterns["stripe"] & ~patterns["temporal"], *candidates])
    return _Masks(rows=q[:, 0], patterns=stacked, density=density,
                  candidate_density=tuple(float(m.float().mean()) for m in candidates))


def head_mass(q: torch.Tensor, k: torch.Tensor, masks: _Masks) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and head: (mass [B, H, P] inside each of ``masks``' P regions; entropy [B, H]
    normalised by log S), from q, k [B, H, S, D] (any float dtype; computed in float32, one head
    at a time so that only one [R, S] map is alive)."""
    b, h, s, d = q.shape
    scale = 1.0 / math.sqrt(d)
    regions = masks.patterns  # [P, R, S] bool; one region at a time keeps one float [R, S] alive
    mass = torch.empty(b, h, regions.shape[0], device=q.device)
    entropy = torch.empty(b, h, device=q.device)
    for i in range(b):
        for j in range(h):
            logits = (q[i, j, masks.rows].float() @ k[i, j].float().T) * scale  # [R, S]
            logp = logits.log_softmax(-1)
            p = logp.exp()
            entropy[i, j] = -(p * logp).sum(-1).mean() / math.log(s) if s > 1 else 0.0
            for r in range(regions.shape[0]):
                mass[i, j, r] = torch.where(regions[r], p, 0.0).sum() / p.shape[0]
    return mass, entropy


class AttentionRecorder(AttentionMethod):
    """A method that records attention statistics and returns None (dense attention, stock output).

    Args:
        steps: step indices to record (None: every step).
        query_stride: see ``query_rows`` (None: automatic).

    Per (layer, head) it sums the pattern masses and entropies of every recorded call (each
    sample of the batch counts as one call); ``stats()`` averages them.
    """

    def __init__(self, steps=None, query_stride: int | None = None) -> None:
        self.steps = None if steps is None else frozenset(int(s) for s in steps)
        self.query_stride = query_stride
        self._masks: dict = {}
        self.mass_sum: dict[int, torch.Tensor] = {}
        self.entropy_sum: dict[int, torch.Tensor] = {}
        self.calls: dict[int, int] = {}
        self.layer_names: dict[int, str] = {}
        self.token_layout: TokenLayout | None = None

    def __repr__(self) -> str:
        return f"AttentionRecorder(steps={sorted(self.steps) if self.steps is not None else 'all'})"

    def __call__(self, call: AttentionCall, q, k, v):
        if self.steps is not None and call.step_index not in self.steps:
            return None
        layout = call.token_layout
        key = (layout, q.device)
        if key not in self._masks:
            self._masks[key] = _masks(layout, query_rows(layout.seq_len, self.query_stride, q.device.type), q.device)
        mass, entropy = head_mass(q, k, self._masks[key])
        layer = call.layer_index
        self.mass_sum[layer] = self.mass_sum.get(layer, 0) + mass.sum(0).cpu()
        self.entropy_sum[layer] = self.entropy_sum.get(layer, 0) + entropy.sum(0).cpu()
        self.calls[layer] = self.calls.get(layer, 0) + q.shape[0]
        self.layer_names[layer] = call.layer_name
        self.token_layout = layout
        return None

    def stats(self) -> "AttentionStats":
        if not self.calls:
            raise RuntimeError("no attention call was recorded: check the recorded steps against num_inference_steps")
        layers = sorted(self.calls)
        mass = torch.stack([self.mass_sum[i] / self.calls[i] for i in layers])  # [L, H, P]
        entropy = torch.stack([self.entropy_sum[i] / self.calls[i] for i in layers])
        masks = next(iter(self._masks.values()))
        return AttentionStats.from_pattern_mass(
            mass, entropy, masks.density, candidate_density=masks.candidate_density,
            layer_names=tuple(self.layer_names[i] for i in layers),
            calls=min(self.calls.values()), token_layout=self.token_layout,
        )


@dataclass(frozen=True)
class AttentionStats:
    """Attention statistics per (layer, head).

    Attributes:
        pattern_mass: {pattern: [L, H]} mass inside Diagonal(1) / MultiDiagonal(1, None) /
            VerticalStripe((0,), 1) (overlapping: the temporal pattern contains the diagonal one).
        mass_shares: [L, H, 4] the partition (diagonal, temporal, stripe, other); sums to 1 per head.
        entropy: [L, H] mean row entropy / log(S).
        density: {pattern: share of the score matrix inside it} (uniform attention's mass).
        classes: [L][H] one of ``HEAD_CLASSES``.
        target: [L][H] (kind, mode, mass, density) of the sparsest ``CANDIDATES`` mode holding
            ``TARGET_MASS`` at density <= ``TARGET_DENSITY``, or None (the structure target).
        candidate_mass: [L, H, C] mass inside each candidate mode (``CANDIDATES`` order).
        layer_names, calls (per layer), token_layout: what was recorded.
    """

    pattern_mass: dict
    mass_shares: torch.Tensor
    entropy: torch.Tensor
    density: dict
    classes: tuple
    target: tuple = ()
    candidate_mass: torch.Tensor | None = None
    candidate_density: tuple = ()
    layer_names: tuple = ()
    calls: int = 0
    token_layout: TokenLayout | None = None
    thresholds: dict = field(default_factory=lambda: {"mass": MASS_THRESHOLD, "lift": MIN_LIFT})

    @classmethod
    def from_pattern_mass(cls, mass: torch.Tensor, entropy: torch.Tensor, density: dict, *,
                          candidate_density: tuple = (), **kwargs) -> "AttentionStats":
        """From mass [L, H, 4 + C] (the PATTERNS, the stripe outside the temporal band, then the C
        candidates of ``CANDIDATES`` whose densities ``candidate_density`` gives) and entropy [L, H]."""
        pattern_mass = {name: mass[..., i] for i, name in enumerate(PATTERNS)}
        diagonal, temporal, stripe_only = pattern_mass["diagonal"], pattern_mass["temporal"], mass[..., len(PATTERNS)]
        shares = torch.stack([diagonal, temporal - diagonal, stripe_only, 1 - temporal - stripe_only], -1)
        candidate_mass = mass[..., len(PATTERNS) + 1 :]
        return cls(pattern_mass=pattern_mass, mass_shares=shares, entropy=entropy, density=density,
                   classes=_classify(pattern_mass, density), target=_target(candidate_mass, candidate_density),
                   candidate_mass=candidate_mass, candidate_density=tuple(candidate_density), **kwargs)

    def target_summary(self) -> dict:
        """The structure target: heads that meet it (share and count), and per kind how many."""
        flat = [t for layer in self.target for t in layer]
        met = [t for t in flat if t is not None]
        kinds = {kind: sum(t[0] == kind for t in met) for kind in CANDIDATES}
        return {"heads": len(flat), "met": len(met), "share": len(met) / max(1, len(flat)), "by_kind": kinds,
                "mass": TARGET_MASS, "max_density": TARGET_DENSITY,
                "goal_met": len(met) * 2 >= len(flat) and all(kinds.values())}

    def head_shares(self) -> dict[str, float]:
        """Share of heads in each class (sums to 1)."""
        flat = [c for layer in self.classes for c in layer]
        return {c: flat.count(c) / len(flat) for c in HEAD_CLASSES}

    def table(self) -> str:
        """Per head: the partition, the pattern masses' lift over uniform, entropy and class; then the shares."""
        lines = [
            f"attention statistics over {self.calls} calls per layer, "
            f"{self.token_layout.describe() if self.token_layout else ''}; pattern densities "
            + ", ".join(f"{k} {v:.1%}" for k, v in self.density.items()),
            f"{'layer':<14}{'head':>5}{'diag':>7}{'temp':>7}{'stripe':>7}{'other':>7}{'entropy':>9}  {'class':<9} "
            f"target (sparsest mode with >= {TARGET_MASS} of the mass at density <= {TARGET_DENSITY})",
        ]
        for li, name in enumerate(self.layer_names or [str(i) for i in range(len(self.classes))]):
            for h, cls in enumerate(self.classes[li]):
                d, t, s, o = (float(x) for x in self.mass_shares[li, h])
                goal = self.target[li][h] if self.target else None
                met = "-" if goal is None else f"{goal[0]} {_mode_text(goal[1])}: mass {goal[2]:.2f} at density {goal[3]:.3f}"
                lines.append(f"{name:<14}{h:>5}{d:>7.2f}{t:>7.2f}{s:>7.2f}{o:>7.2f}{float(self.entropy[li, h]):>9.2f}  {cls:<9} {met}")
        shares = self.head_shares()
        n = sum(len(layer) for layer in self.classes)
        lines.append("heads: " + ", ".join(f"{c} {shares[c]:.0%} ({round(shares[c] * n)})" for c in HEAD_CLASSES))
        if self.target:
            t = self.target_summary()
            lines.append(f"structure target: {t['met']} of {t['heads']} heads ({t['share']:.0%}) hold >= {TARGET_MASS} of their "
                         f"mass in one mode of density <= {TARGET_DENSITY}; by kind "
                         + ", ".join(f"{k} {v}" for k, v in t["by_kind"].items())
                         + f" (goal: half of the heads, every kind present: {'met' if t['goal_met'] else 'not met'})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "layer_names": list(self.layer_names), "calls": self.calls,
            "token_layout": self.token_layout.describe() if self.token_layout else None,
            "density": self.density, "thresholds": self.thresholds,
            "mass_shares": self.mass_shares.tolist(), "partition": list(PARTITION),
            "pattern_mass": {k: v.tolist() for k, v in self.pattern_mass.items()},
            "entropy": self.entropy.tolist(), "classes": [list(c) for c in self.classes],
            "head_shares": self.head_shares(),
            "candidates": [{"kind": kind, **mode_to_dict(mode), "density": dens}
                           for (kind, mode), dens in zip(_candidate_list(), self.candidate_density)],
            "candidate_mass": None if self.candidate_mass is None else self.candidate_mass.tolist(),
            "target": [[None if t is None else {"kind": t[0], **mode_to_dict(t[1]), "mass": t[2], "density": t[3]}
                        for t in layer] for layer in self.target],
            "target_summary": self.target_summary() if self.target else None,
        }


def _classify(pattern_mass: dict, density: dict) -> tuple:
    order = sorted(PATTERNS, key=lambda name: density[name])
    layers, heads = next(iter(pattern_mass.values())).shape
    out = []
    for li in range(layers):
        row = []
        for h in range(heads):
            cls = "diffuse"
            for name in order:
                m = float(pattern_mass[name][li, h])
                if m >= MASS_THRESHOLD and m >= MIN_LIFT * density[name]:
                    cls = name
                    break
            row.append(cls)
        out.append(tuple(row))
    return tuple(out)


def _mode_text(mode) -> str:
    return ", ".join(f"{k} {v}" for k, v in mode_to_dict(mode).items() if k != "mode")


def _target(candidate_mass: torch.Tensor, candidate_density) -> tuple:
    """Per head, (kind, mode, mass, density) of the sparsest candidate holding ``TARGET_MASS`` at
    density <= ``TARGET_DENSITY``, or None."""
    if not candidate_density:
        return ()
    candidates = _candidate_list()
    order = sorted(range(len(candidates)), key=lambda c: candidate_density[c])
    layers, heads = candidate_mass.shape[:2]
    out = []
    for li in range(layers):
        row = []
        for h in range(heads):
            hit = None
            for c in order:
                m, dens = float(candidate_mass[li, h, c]), candidate_density[c]
                if dens <= TARGET_DENSITY and m >= TARGET_MASS:
                    hit = (candidates[c][0], candidates[c][1], m, dens)
                    break
            row.append(hit)
        out.append(tuple(row))
    return tuple(out)


def attention_statistics(
    pipe,
    prompts=DEFAULT_PROMPTS,
    *,
    num_inference_steps: int = 10,
    steps=None,
    query_stride: int | None = None,
    seed: int = 0,
    **generation,
) -> AttentionStats:
    """Run ``pipe`` (a proxy or any Wan pipeline) on ``prompts`` with an ``AttentionRecorder`` and
    return the statistics.

    Args:
        steps: step indices to record; None: first, middle and last step.
        query_stride: see ``query_rows``.
        generation: pipeline call arguments over ``PROXY_GENERATION`` (height, width, num_frames,
            guidance_scale, max_sequence_length; the size defaults to the one a proxy pipeline was
            trained at); the output is left as a latent.
    """
    from pipelines.apply import apply_sparse_attention
    from pipelines.proxy.model import PROXY_GENERATION

    if steps is None:
        steps = sorted({0, num_inference_steps // 2, num_inference_steps - 1})
    recorder = AttentionRecorder(steps=steps, query_stride=query_stride)
    config = getattr(pipe, "proxy_config", None)  # a proxy made at another size runs at its own
    trained = {} if config is None else dict(height=config.height, width=config.width, num_frames=config.frames,
                                              max_sequence_length=config.max_sequence_length)
    kwargs = {**PROXY_GENERATION, **trained, **generation, "num_inference_steps": num_inference_steps, "output_type": "latent"}
    with apply_sparse_attention(pipe, recorder), torch.no_grad():
        for i, prompt in enumerate(prompts):
            pipe(prompt, generator=torch.Generator().manual_seed(seed + i), **kwargs)
    return recorder.stats()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.proxy.attention_stats", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a proxy checkpoint (default: the shipped one)")
    source.add_argument("--random", action="store_true", help="the untrained architecture (random weights)")
    parser.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per generation")
    parser.add_argument("--record-steps", type=int, nargs="+", help="steps to record (default: first, middle, last)")
    parser.add_argument("--query-stride", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the pipeline's dtype (statistics are computed in float32 either way)")
    parser.add_argument("--size", help="FRAMESxHEIGHTxWIDTH to generate at (default: the proxy's evaluation size)")
    parser.add_argument("--json", help="also write the statistics to this JSON file")
    args = parser.parse_args(argv)

    from pipelines.proxy.model import ProxyCheckpointMissing, build_proxy_pipeline, load_proxy_pipeline

    if args.random:
        pipe = build_proxy_pipeline().to(args.device)
        pipe.set_progress_bar_config(disable=True)
    else:
        try:
            pipe = load_proxy_pipeline(args.device, getattr(torch, args.dtype), path=args.checkpoint)
        except ProxyCheckpointMissing as exc:
            print(exc, file=sys.stderr)
            return 2
    size = {}
    if args.size:
        frames, height, width = (int(v) for v in args.size.lower().split("x"))
        size = dict(num_frames=frames, height=height, width=width)
    stats = attention_statistics(pipe, args.prompts, num_inference_steps=args.steps, steps=args.record_steps,
                                 query_stride=args.query_stride, **size)
    print(stats.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats.to_dict(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
