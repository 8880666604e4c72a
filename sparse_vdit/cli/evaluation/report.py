"""The result of an evaluation: one row per (method, setting, prompt, seed), a summary per
(method, setting), CSV and JSON files, a printed table and the findings a reader must not miss.

Summary conventions (docs: the field's): PSNR per frame averaged over frames, then over prompts
and seeds; SSIM likewise; ``density`` the attention computed per call (1.0 = dense), averaged;
``speedup`` the dense reference's mean denoising time over the method's (the transformer's loop,
the part attention changes; ``e2e_speedup`` the same for the whole call, text encoding and decode
included).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

__all__ = ["DENSE", "EvalRow", "EvalSummary", "EvalReport", "legend"]

DENSE = "dense"


@dataclass(frozen=True)
class EvalRow:
    """One generation, compared with the dense one of the same prompt and seed.

    Attributes:
        method, setting: e.g. "adaspa", "s=0.8" ("dense", "" for the reference).
        prompt, seed: of the generation.
        psnr: dB, per frame averaged over frames (+inf for the reference itself).
        ssim: averaged over frames.
        density: attention computed per call, mean over calls (``MeteredMethod``).
        scan: block-mass passes per call (AdaSpa's searches), mean over calls.
        total_s: the whole pipeline call; denoise_s: the denoising loop; transformer_s: inside
            the transformer's forwards; step_s: each step.
    """

    method: str
    setting: str
    prompt: str
    seed: int
    psnr: float
    ssim: float
    density: float
    scan: float
    total_s: float
    denoise_s: float
    transformer_s: float
    step_s: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.method} ({self.setting})" if self.setting else self.method


@dataclass(frozen=True)
class EvalSummary:
    """One (method, setting) over every prompt and seed (see the module docstring)."""

    method: str
    setting: str
    psnr: float
    ssim: float
    density: float
    scan: float
    denoise_s: float
    total_s: float
    speedup: float
    e2e_speedup: float
    runs: int

    @property
    def label(self) -> str:
        return f"{self.method} ({self.setting})" if self.setting else self.method


def _mean(values) -> float:
    values = list(values)
    return mean(values) if values else math.nan


@dataclass
class EvalReport:
    """Rows of an evaluation and what it was run on (``meta``: model, device, dtype, steps, size,
    warm-up, notes such as untrained weights or the CPU fallback)."""

    rows: list[EvalRow]
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[EvalSummary]:
        groups: dict[tuple[str, str], list[EvalRow]] = {}
        for row in self.rows:
            groups.setdefault((row.method, row.setting), []).append(row)
        dense = groups.get((DENSE, ""), [])
        dense_denoise, dense_total = _mean(r.denoise_s for r in dense), _mean(r.total_s for r in dense)
        out = []
        for (method, setting), rows in groups.items():
            denoise, total = _mean(r.denoise_s for r in rows), _mean(r.total_s for r in rows)
            out.append(EvalSummary(
                method=method, setting=setting, psnr=_mean(r.psnr for r in rows), ssim=_mean(r.ssim for r in rows),
                density=_mean(r.density for r in rows), scan=_mean(r.scan for r in rows), denoise_s=denoise,
                total_s=total, speedup=dense_denoise / denoise if denoise else math.nan,
                e2e_speedup=dense_total / total if total else math.nan, runs=len(rows),
            ))
        return out

    def findings(self) -> list[str]:
        """Where a method falls below a simple baseline: a baseline setting with higher PSNR at no
        more attention computed (density). One line each, with the likely reason."""
        from sparse_vdit.cli.evaluation.methods import baseline_names

        simple = baseline_names()
        summary = [s for s in self.summary() if s.method != DENSE]
        baselines = [s for s in summary if s.method in simple]
        lines = []
        for s in summary:
            if s.method in simple:
                continue
            beaten = [b for b in baselines if b.psnr > s.psnr and b.density <= s.density]
            if beaten:
                b = max(beaten, key=lambda x: x.psnr)
                lines.append(
                    f"{s.label} falls below the baseline {b.label}: PSNR {s.psnr:.2f} vs {b.psnr:.2f} dB at attention "
                    f"density {s.density:.3f} vs {b.density:.3f}. Why: {self._why(s)}"
                )
        return lines

    def _why(self, s: EvalSummary) -> str:
        from sparse_vdit.cli.evaluation.methods import registry

        if self.meta.get("random_weights"):
            return ("the model has random weights, so its attention has no structure for any method to exploit; "
                    "every sparse choice is a guess and the ranking is noise")
        entry = registry().get(s.method)
        return entry.why_below_baseline if entry is not None else "see the per-prompt rows"

    # ------------------------------------------------------------------ output
    @property
    def on_cpu(self) -> bool:
        """Run on the CPU: its times are the PyTorch fallback's, which computes every score and
        masks it, so a speedup from them means nothing (density is what the CPU can say)."""
        return str(self.meta.get("device", "")).startswith("cpu")

    def table(self) -> str:
        """The summary as a fixed-width table, dense first; the speedup column reads "n/a (CPU)"
        on the CPU."""
        summary = sorted(self.summary(), key=lambda s: (s.method != DENSE, s.method, s.density))
        lines = [f"{'method':<26}{'density':>8}{'PSNR dB':>9}{'SSIM':>7}{'denoise s':>11}{'total s':>9}{'speedup':>11}"]
        for s in summary:
            psnr = "ref" if s.method == DENSE else f"{s.psnr:.2f}"
            speedup = "n/a (CPU)" if self.on_cpu else f"{s.speedup:.2f}x"
            lines.append(f"{s.label:<26}{s.density:>8.3f}{psnr:>9}{s.ssim:>7.3f}{s.denoise_s:>11.2f}"
                         f"{s.total_s:>9.2f}{speedup:>11}")
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> Path:
        """Every row; ``step_s`` as seconds joined by ';'."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = [f for f in EvalRow.__dataclass_fields__]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                values = asdict(row)
                values["step_s"] = ";".join(f"{t:.6f}" for t in row.step_s)
                writer.writerow(values)
        return path

    def to_json(self, path: str | Path) -> Path:
        """``{"meta", "summary", "findings", "rows"}``; infinite PSNR as the string "inf"."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        data = {"meta": self.meta, "summary": [asdict(s) for s in self.summary()], "findings": self.findings(),
                "rows": [asdict(r) for r in self.rows]}
        path.write_text(json.dumps(clean(data), indent=1))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "EvalReport":
        data = json.loads(Path(path).read_text())
        rows = [EvalRow(**{**r, "psnr": float(r["psnr"]), "step_s": tuple(r["step_s"])}) for r in data["rows"]]
        return cls(rows=rows, meta=data.get("meta", {}))


def legend(report: EvalReport) -> str:
    """What each column of ``report.table()`` means, for a reader new to the field, and the notes
    that change how to read it (untrained weights, the CPU fallback)."""
    lines = [
        "density  fraction of the attention computed per call (1.000 = dense); dense warm-up steps and AdaSpa's "
        "search steps count as computed",
        "PSNR     against the dense video of the same prompt and seed, per frame averaged (dB): > 30 near-identical, "
        "20-30 visible differences, < 20 a different video",
        "SSIM     structural similarity to the dense video (1 = identical; torchmetrics)",
        "denoise  seconds in the denoising loop (what attention changes); total: the whole call with text encoding "
        "and decode; speedup: dense denoise / method denoise",
    ]
    if report.on_cpu:
        lines.append("times on the CPU are of the PyTorch fallback path (it computes every score and masks them), not "
                     "of the GPU kernels: they say nothing about speed, so no speedup is shown; density is what a GPU "
                     "would save")
    note = report.meta.get("note")
    if note:
        lines.append(f"NOTE: {note}")
    return "\n".join(lines)
