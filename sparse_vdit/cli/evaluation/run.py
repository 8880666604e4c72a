"""``evaluate``: dense against sparse methods on the same prompts and seeds.

    from sparse_vdit.cli.evaluation import evaluate
    from adaspa import AdaSpaAttention
    from sparse_vdit.baselines import StaticWindowAttention
    report = evaluate(pipe, {"adaspa": {"s=0.8": AdaSpaAttention(0.8)}, "window": StaticWindowAttention(2)},
                      ["a red circle moves right"], seeds=[0, 1], num_inference_steps=20, out_dir="eval",
                      height=64, width=96, num_frames=33)
    print(report.table())

For each (prompt, seed) the dense generation (stock processors, nothing applied) is the reference;
each method is applied with ``apply_sparse_attention``, generates the same prompt and seed (a CPU
``torch.Generator``, so the noise is the same on every device), and is removed. Per generation:
PSNR and SSIM against dense, the attention computed (``MeteredMethod``), total / denoising /
transformer / per-step times (``StepClock``). With ``warmup``, every method (and dense) first runs
one untimed generation of the first prompt and seed, so kernels are compiled and caches (a plan's
layouts, cuDNN) are filled before anything is timed.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from sparse_vdit.cli.evaluation.metering import MeteredMethod, StepClock
from sparse_vdit.cli.evaluation.metrics import video_psnr, video_ssim
from sparse_vdit.cli.evaluation.report import DENSE, EvalReport, EvalRow
from pipelines.videos import require_video_writer, side_by_side, slug, write_video

__all__ = ["evaluate", "MethodSetting", "method_settings"]

MethodSetting = tuple[str, str, Any]  # (method name, setting label, method or None for stock attention)


def method_settings(methods: Mapping[str, Any]) -> list[MethodSetting]:
    """``{name: method | None | {setting: method}}`` -> [(name, setting, method)] in order.

    None is stock attention (nothing applied). A name may not be "dense" (the reference's)."""
    out: list[MethodSetting] = []
    for name, value in methods.items():
        if name == DENSE:
            raise ValueError(f"'{DENSE}' names the reference, which every evaluation runs: give the method another name")
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"method {name!r} has no settings")
            out += [(name, str(setting), method) for setting, method in value.items()]
        else:
            out.append((name, "", value))
    return out


@contextlib.contextmanager
def _warnings_above(bar):
    """Warnings raised while the bar is drawn are written above it (tqdm.write), not into it."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        bar.write(f"{category.__name__}: {message}")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


@contextlib.contextmanager
def _quiet_pipeline_bar(pipe):
    """The pipeline's own per-call progress bar off for the duration (one bar counts every step)."""
    saved = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(**{**saved, "disable": True})
    try:
        yield
    finally:
        pipe._progress_bar_config = saved


def _generate(pipe, metered: MeteredMethod | None, prompt: str, seed: int, steps: int, on_step, call_kwargs,
              precision: str | None = None):
    """(video [F, C, H, W] float on the CPU, StepClock) of one generation with ``metered`` applied
    at ``precision`` (``apply_sparse_attention``'s)."""
    from pipelines.apply import apply_sparse_attention

    applied = (apply_sparse_attention(pipe, metered, precision=precision) if metered is not None
               else contextlib.nullcontext())
    with applied, torch.no_grad():
        if metered is not None:
            metered.reset()
        with StepClock(pipe, on_step) as clock:
            frames = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(int(seed)),
                          output_type="pt", callback_on_step_end=clock.callback, **call_kwargs).frames
    return frames[0].float().cpu(), clock


def check_compile_warmup(compile: Any, warmup: bool | int, num_inference_steps: int) -> None:
    """Compiled blocks need the full-length warm-up: each method's phases (dense steps, searches,
    sparse steps) compile at their first step, which must not be a timed one."""
    if compile is not False and warmup is not True and int(warmup) < num_inference_steps:
        raise ValueError(
            f"compiled blocks need the full-length warm-up (warmup=True, --warmup {num_inference_steps} or "
            f"leave it out): with {int(warmup)} warm-up steps a method's later phases would compile inside a timed run"
        )


def _compile_blocks(pipe, compile: Any) -> None:
    """diffusers' regional compilation of ``pipe.transformer`` (True: its default backend)."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not getattr(transformer, "_repeated_blocks", None):
        name = type(transformer).__name__ if transformer is not None else type(pipe).__name__
        raise ValueError(
            f"{name} declares no repeated blocks (_repeated_blocks), so compile_repeated_blocks() cannot compile "
            "it: evaluate without compile, or compile its blocks yourself before calling evaluate"
        )
    transformer.compile_repeated_blocks(**({} if compile is True else {"backend": compile}))


def evaluate(
    pipe,
    methods: Mapping[str, Any],
    prompts: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    num_inference_steps: int,
    out_dir: str | Path | None = None,
    warmup: bool | int = True,
    videos: bool = True,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    compile: Any = False,
    precision: str | None = None,
    **call_kwargs: Any,
) -> EvalReport:
    """Evaluate ``methods`` against dense on every (prompt, seed); returns an ``EvalReport``.

    Args:
        pipe: a diffusers video pipeline of a supported family (on its device and dtype).
        methods: ``{name: method}`` or ``{name: {setting: method}}`` (curves: several epsilons,
            sparsities, window sizes); a method is any ``AttentionMethod``; None is stock attention.
        prompts, seeds: every combination is generated by dense and by every method.
        num_inference_steps: denoising steps of every generation.
        out_dir: if given: ``report.csv``, ``report.json`` and, with ``videos``, side-by-side mp4s
            ``videos/<prompt>/seed<seed>/<method>_<setting>.mp4`` (dense | method | |diff| x4).
        warmup: True: one untimed generation per method (and dense) before timing, at the full
            step count; an int: that many steps instead (cheaper; kernels compile all the same);
            False or 0: none (the first generation then pays for compilation).
        progress: one progress bar over every denoising step of the evaluation.
        meta: recorded in the report (model name, notes).
        compile: True: diffusers' ``compile_repeated_blocks()`` on ``pipe.transformer`` (in place)
            before anything runs, so dense and every method run compiled blocks; a torch.compile
            backend (name or callable) compiles with that one. Where the step is bound by the host's
            kernel launches (small models), this is how the speedups are fair. Needs the full-length
            warm-up (``warmup=True``): each method's phases (dense steps, searches, sparse steps)
            compile at their first step, which must not be a timed one.
        precision: every method runs at this ``apply_sparse_attention`` precision ("fp8": FP8
            attention, dense calls included; a ``FullAttention()`` method then measures FP8 alone);
            the dense reference stays stock (the model's dtype).
        call_kwargs: passed to every pipeline call (height, width, num_frames, guidance_scale, ...).
    """
    if not prompts or not seeds:
        raise ValueError("give at least one prompt and one seed")
    if "callback_on_step_end" in call_kwargs or "output_type" in call_kwargs or "generator" in call_kwargs:
        raise ValueError("evaluate sets callback_on_step_end (timing), output_type and generator itself: leave them out")
    if out_dir is not None and videos:  # before minutes of generation, not after the first one
        require_video_writer("writing the side-by-side videos", " (or leave videos out: videos=False, --no-videos)")
    check_compile_warmup(compile, warmup, num_inference_steps)
    settings = method_settings(methods)
    if compile is not False:
        _compile_blocks(pipe, compile)
    metered = {(name, setting): MeteredMethod(m) if m is not None else None for name, setting, m in settings}
    warm_steps = num_inference_steps if warmup is True else int(warmup or 0)
    combos = [(p, int(s)) for p in prompts for s in seeds]
    runs = [(DENSE, "", None)] + [(name, setting, metered[(name, setting)]) for name, setting, _ in settings]
    total = len(runs) * (warm_steps + len(combos) * num_inference_steps)
    out = Path(out_dir) if out_dir is not None else None
    device = getattr(pipe, "device", torch.device("cpu"))
    report = EvalReport(rows=[], meta={
        "device": str(device), "dtype": str(getattr(pipe, "dtype", "")).replace("torch.", ""),
        "num_inference_steps": num_inference_steps, "prompts": list(prompts), "seeds": [int(s) for s in seeds],
        "warmup_steps": warm_steps, "call_kwargs": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str))},
        "methods": {f"{n} ({s})" if s else n: repr(m) for n, s, m in settings},
        "precision": precision,
        **dict(meta or {}),
    })
    bar = tqdm(total=total, desc="evaluate", unit="step", disable=not progress)
    on_step = lambda _step: bar.update(1)  # noqa: E731
    with bar, _warnings_above(bar), _quiet_pipeline_bar(pipe):
        if warm_steps:
            for name, setting, method in runs:
                bar.set_postfix_str(f"warm-up {name} {setting}".strip())
                _generate(pipe, method, combos[0][0], combos[0][1], warm_steps, on_step, call_kwargs, precision)
        for prompt, seed in combos:
            bar.set_postfix_str(f"dense, {prompt!r} seed {seed}")
            reference, clock = _generate(pipe, None, prompt, seed, num_inference_steps, on_step, call_kwargs)
            report.rows.append(EvalRow(DENSE, "", prompt, seed, float("inf"), 1.0, 1.0, 0.0, clock.total_s,
                                       clock.denoise_s, clock.transformer_s, tuple(clock.step_s)))
            where = out / "videos" / slug(prompt) / f"seed{seed}" if out is not None and videos else None
            if where is not None:
                write_video(reference, where / "dense.mp4")
            for name, setting, method in runs[1:]:
                bar.set_postfix_str(f"{name} {setting}, {prompt!r} seed {seed}".replace("  ", " "))
                video, clock = _generate(pipe, method, prompt, seed, num_inference_steps, on_step, call_kwargs,
                                         precision)
                reading = method.reading() if method is not None else None
                report.rows.append(EvalRow(
                    name, setting, prompt, seed, video_psnr(video, reference), video_ssim(video, reference),
                    reading.density if reading else 1.0, reading.scan if reading else 0.0,
                    clock.total_s, clock.denoise_s, clock.transformer_s, tuple(clock.step_s),
                ))
                if where is not None:
                    label = f"{name} {setting}".strip()
                    write_video(side_by_side(reference, video, label=label), where / f"{slug(label.replace(' ', '_'))}.mp4")
    if out is not None:
        report.to_csv(out / "report.csv")
        report.to_json(out / "report.json")
    return report
