"""Where an AdaSpa step's time goes outside its kernels: host synchronisations, allocator calls and
the busiest host-side ops of each step kind, at the proxy's evaluation size.

    python benchmarks/profile_adaspa_step.py [--model proxy] [--sparsity 0.9]

Why: on an H100 (RESULTS.md 2026-12-07 15:45) one layer's sparse attention call takes 0.35 ms
against dense's 2.30, yet the whole sparse forward (10 layers) takes 36 ms against dense's 39: about
1.8 ms a layer is spent outside the attention call. Runs two generations of bench_adaspa's step
kinds as a warm-up, then, for a third, each step kind once under ``torch.cuda.set_sync_debug_mode``
(every synchronising call's Python location, counted) and once under ``torch.profiler`` (CUDA
runtime calls counted; the top host ops by self CPU time). CUDA only.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from bench_adaspa import MODELS, STEP_KINDS, build_model, model_inputs  # noqa: E402

RUNTIME_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "cudaMalloc", "cudaFree",
                 "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")


def _forward(model, kwargs, step: int) -> None:
    with model.cache_context("cond", step_index=step, num_inference_steps=len(STEP_KINDS)):
        model(**kwargs)


def _sync_sites(model, kwargs, step: int) -> collections.Counter:
    """Python locations (file:line) of the synchronising CUDA calls of one forward."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _forward(model, kwargs, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message).lower())


def _profile(model, kwargs, step: int):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        _forward(model, kwargs, step)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
    return ms, prof


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="proxy")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--top", type=int, default=12, help="host ops listed per step kind")
    args = p.parse_args(argv)
    device = common.setup()
    if device.type != "cuda":
        raise SystemExit("profile_adaspa_step.py needs CUDA (it profiles host synchronisations on the GPU)")
    from adaspa import AdaSpaAttention
    from pipelines import apply_sparse_attention

    spec, dtype = MODELS[args.model], torch.bfloat16
    model = build_model(spec, device, dtype)
    kwargs = model_inputs(spec, device, dtype)
    cfg = AdaSpaAttention(sparsity=args.sparsity, block_size=args.block, warmup_steps=1, search_steps=(1, 2),
                          schedule_steps=None)
    rows = []
    with torch.no_grad(), apply_sparse_attention(model, cfg):
        for _ in range(2):  # warm-up generations: compiles, autotuning, allocator
            for step in range(len(STEP_KINDS)):
                _forward(model, kwargs, step)
        for step, kind in enumerate(STEP_KINDS):  # a third generation, step by step
            sites = _sync_sites(model, kwargs, step)
            print(f"\n### {kind} (step {step}): {sum(sites.values())} synchronising calls")
            for site, n in sites.most_common(15):
                print(f"  {n:4d}  {site}")
        for step, kind in enumerate(STEP_KINDS):  # a fourth, profiled
            ms, prof = _profile(model, kwargs, step)
            events = prof.key_averages()
            counts = {name: sum(e.count for e in events if e.key == name) for name in RUNTIME_CALLS}
            host_ms = sum(e.self_cpu_time_total for e in events) / 1e3
            # Device time of the kernels themselves (a host op's self device time repeats its kernels').
            cuda_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3
            rows.append((kind, ms, host_ms, cuda_ms, counts))
            print(f"\n### {kind} (step {step}) profiled: {ms:.1f} ms wall")
            print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60))
    print("\n| step kind | wall ms (profiled) | host self ms | kernel ms | " + " | ".join(RUNTIME_CALLS) + " |")
    print("|---|---|---|---|" + "---|" * len(RUNTIME_CALLS))
    for kind, ms, host_ms, cuda_ms, counts in rows:
        print(f"| {kind} | {ms:.1f} | {host_ms:.1f} | {cuda_ms:.1f} | " + " | ".join(str(counts[n]) for n in RUNTIME_CALLS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
