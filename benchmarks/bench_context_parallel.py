"""Context parallelism: one denoising step of full-size random-weight Wan2.1-14B at 720p on 2 GPUs
(diffusers' Ulysses, ``ulysses_degree=2``), dense against sparse, beside the same step on 1 GPU.

Wan2.1-14B is built from its config on every GPU in bf16, random weights (40 layers, 40 heads x
128, ffn 13824, in/out 16 channels, text_dim 4096, freq_dim 256, patch (1, 2, 2), qk_norm
rms_norm_across_heads, cross_attn_norm True); latent [1, 16, 21, 90, 160] (75,600 tokens), text
[1, 512, 4096]. One transformer forward = one denoising step of one CFG branch. Timed forwards
(median of --reps after --warmup; under context parallelism every rank starts together after a
barrier and the step's time is the slowest rank's):

    1 GPU     dense (diffusers)      the stock processors: diffusers' default attention (cuDNN SDPA)
    1 GPU     AdaSpa sparse step     AdaSpaAttention(sparsity=0.8): block-sparse attention on the
                                     selection of a first search (density ~0.2), index lists rebuilt
                                     from the bitmask each step
    1 GPU     plan (~0.2)            a Sparse-vDiT plan whose heads cycle through four modes of
                                     density 0.12 to 0.25 (mean ~0.2, printed)
    2 GPUs    dense (diffusers)      stock processors under diffusers' Ulysses
    2 GPUs    dense (sparse-vdit)    FullAttention through our processors: our exchange, then
                                     diffusers' attention on the exchanged heads
    2 GPUs    AdaSpa sparse step     as above, each GPU its 20 heads of the whole sequence
    2 GPUs    plan (~0.2)            as above

Launch with torchrun on one host (NCCL; NVLink multicast is switched off in this script's
environment before the process group starts: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1):

    SPARSE_VDIT_COMMIT=<commit> torchrun --nproc_per_node 2 benchmarks/bench_context_parallel.py
    python benchmarks/bench_context_parallel.py --smoke     # CPU: spawns 2 gloo processes, a tiny Wan

``--smoke`` runs a tiny Wan (4 heads) on 2 processes: CUDA + NCCL when the machine has 2 GPUs and
it is launched with torchrun, else the CPU with gloo (started by the script itself unless launched
with torchrun); every path runs, times mean nothing. Rank 0 prints the environment header first
and the table last, and writes the JSON (``common.write_json``).
"""

from __future__ import annotations

import os

# NVLink multicast (NVLS / symmetric memory) off, before anything can start NCCL.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(MULTICAST_OFF)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_adaspa  # noqa: E402
import common  # noqa: E402
import torch  # noqa: E402

WORLD = 2
# The same random-weight Wan2.1-14B 720p (and tiny smoke Wan, here with 4 heads) as bench_adaspa.py.
WAN14B = bench_adaspa.MODELS["14b"]
SMOKE = bench_adaspa.SMOKE_MODEL


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    config: dict
    latent: tuple[int, int, int, int, int]
    text: tuple[int, int, int]
    block: int
    plan_modes: tuple  # a cycle of per-head modes (built lazily: sparse_vdit imports after setup)


def spec_for(smoke: bool, device: torch.device) -> Spec:
    from sparse_vdit.modes import Diagonal, MultiDiagonal, VerticalStripe

    if smoke:
        block = 16 if device.type == "cpu" else 64
        modes = (MultiDiagonal(1, None), Diagonal(1), VerticalStripe((0,), 1), MultiDiagonal(1, 1))
        config = dict(SMOKE.config, num_attention_heads=4)  # 2 heads per rank
        return Spec("tiny Wan (smoke), 4 heads", config, SMOKE.latent, SMOKE.text, block, modes)
    # Densities at 21 x 45 x 80 tokens, blocks of 128: 0.252, 0.170, 0.245, 0.121 (mean 0.197).
    modes = (MultiDiagonal(4, None), MultiDiagonal(2, None), VerticalStripe((0, 5, 10, 15, -1), 1), MultiDiagonal(12, 2))
    return Spec(WAN14B.name, WAN14B.config, WAN14B.latent, WAN14B.text, 128, modes)


# --------------------------------------------------------------------------- process group
def init_distributed(smoke: bool, init_method: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world, device) after init_process_group (torchrun's env://, or ``init_method``):
    NCCL on CUDA, gloo on the CPU."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    if not use_cuda and not smoke:
        raise SystemExit(f"the full run needs {world} CUDA GPUs on this host; --smoke runs on the CPU")
    device = common.setup(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        # diffusers places rank r on accelerator r % device_count(), which is 0 without one.
        torch.accelerator.device_count = lambda: 1
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=15), **({"device_id": device} if use_cuda else {}))
    return rank, world, device


def spawn_smoke(argv: list[str]) -> int:
    """--smoke without torchrun: two CPU processes with a file store."""
    import torch.multiprocessing as mp

    store = Path(tempfile.mkdtemp()) / "store"
    mp.spawn(_spawned, args=(WORLD, str(store), argv), nprocs=WORLD, join=True)
    return 0


def _spawned(rank: int, world: int, store: str, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    run(parse(argv), init_method=f"file://{store}")


# --------------------------------------------------------------------------- model and forwards
def make_plan(model, spec: Spec):
    from pipelines import model_info, token_layout_of
    from sparse_vdit import Plan
    from sparse_vdit.plan import CostTable

    info = model_info(model)
    modes = tuple(spec.plan_modes[h % len(spec.plan_modes)] for h in range(info.num_heads))
    _, _, t, h, w = spec.latent
    layout = token_layout_of(model, t, h, w)
    costs = CostTable("flops", None, "bench_context_parallel (unused)", tuple((m, 0.2) for m in spec.plan_modes))
    return Plan.from_step_modes([[modes] * info.num_layers], model=info, token_layout=layout, block_size=spec.block,
                                lam=0.0, epsilon=0.0, cost=costs)


class Timer:
    """Times forwards on every rank; under context parallelism a barrier lines the ranks up first."""

    def __init__(self, device: torch.device, warmup: int, reps: int) -> None:
        self.device, self.warmup, self.reps = device, warmup, reps

    def __call__(self, forward, *, together: bool) -> tuple[float, torch.Tensor]:
        import torch.distributed as dist

        times, out = [], None
        for i in range(self.warmup + self.reps):
            common.sync(self.device)
            if together:
                dist.barrier()
            t0 = time.perf_counter()
            out = forward(i)
            common.sync(self.device)
            if i >= self.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), out


@torch.no_grad()
def measure_kinds(model, kwargs: dict, spec: Spec, args, timer: Timer, *, parallel: bool) -> dict:
    """{kind: (ms on this rank, density or None, output)} of every forward kind (see the docstring)."""
    from adaspa import AdaSpaAttention
    from pipelines import FullAttention, apply_sparse_attention

    def plain(i):
        return model(**kwargs)[0]

    def at_step(step: int, steps: int):
        with model.cache_context("cond", step_index=step, num_inference_steps=steps):
            return model(**kwargs)[0]

    results = {}
    ms, out = timer(plain, together=parallel)
    results["dense (diffusers)"] = (ms, 1.0, out)
    if parallel:
        with apply_sparse_attention(model, FullAttention()):
            ms, out = timer(lambda i: at_step(0, 1), together=True)
        results["dense (sparse-vdit, FullAttention)"] = (ms, 1.0, out)
    config = AdaSpaAttention(sparsity=args.sparsity, block_size=spec.block, warmup_steps=1, search_steps=(1,),
                          schedule_steps=None)
    with apply_sparse_attention(model, config) as handle:
        at_step(0, 1000)  # warm-up (dense)
        at_step(1, 1000)  # first search: the selection the sparse steps use
        ms, out = timer(lambda i: at_step(2 + i, 1000), together=parallel)
        state = handle.trackers[0].current.state
        density = statistics.mean(float(state.selected_blocks(layer).float().mean()) for layer in state.selections)
    results[f"AdaSpa sparse step (s = {args.sparsity})"] = (ms, density, out)
    plan = make_plan(model, spec)
    with apply_sparse_attention(model, plan):
        ms, out = timer(lambda i: at_step(0, 1), together=parallel)
    results[f"plan ({len(spec.plan_modes)} modes per head cycle)"] = (ms, plan.expected_density, out)
    return results


def slowest(ms: float, world: int) -> float:
    import torch.distributed as dist

    every = [None] * world
    dist.all_gather_object(every, ms)
    return max(every)


# --------------------------------------------------------------------------- main
def run(args, init_method: str | None = None) -> int:
    import torch.distributed as dist

    rank, world, device = init_distributed(args.smoke, init_method)  # sets TRITON_INTERPRET before triton loads
    from diffusers import ContextParallelConfig

    spec = spec_for(args.smoke, device)
    dtype = torch.bfloat16
    lead = rank == 0
    info = common.env_header(device, smoke=args.smoke, extra={
        "world": world, "backend": dist.get_backend(), "model": spec.name, "latent": spec.latent, "text": spec.text,
        "heads": spec.config["num_attention_heads"], "layers": spec.config["num_layers"], "block": spec.block,
        "sparsity": args.sparsity, "reps": args.reps, "warmup": args.warmup,
        **{k: os.environ.get(k) for k in MULTICAST_OFF},
    })
    if lead:
        common.print_header(info, "Context parallelism (Ulysses, 2 GPUs): one denoising step, dense vs sparse")
    timer = Timer(device, args.warmup, args.reps)
    t0 = time.perf_counter()
    model = bench_adaspa.build_model(spec, device, dtype)
    kwargs = bench_adaspa.model_inputs(spec, device, dtype)
    if lead:
        print(f"built on every rank in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    single = measure_kinds(model, kwargs, spec, args, timer, parallel=False)
    dist.barrier()
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    both = measure_kinds(model, kwargs, spec, args, timer, parallel=True)
    dense_one = slowest(single["dense (diffusers)"][0], world)
    dense_cp = slowest(both["dense (diffusers)"][0], world)
    setups = ("1 GPU", f"{world} GPUs, Ulysses") if device.type == "cuda" else ("1 CPU process", f"{world} CPU processes, Ulysses")
    for setup, results in zip(setups, (single, both)):
        for kind, (ms, density, out) in results.items():
            ms = slowest(ms, world)
            one = single.get(kind)
            rows.append({
                "setup": setup, "forward": kind, "ms": ms, "attention density": density,
                "vs 1-GPU dense": dense_one / ms, f"vs {world}-GPU dense": dense_cp / ms,
                "scaling vs its 1-GPU run": None if results is single or one is None else slowest(one[0], world) / ms,
                "rel err vs its 1-GPU output": None if results is single or one is None else common.rel_err(out, one[2]),
            })
            if lead:
                print(f"[{setup}] {kind}: {ms:.1f} ms", flush=True)
    full_vs_stock = common.rel_err(both["dense (sparse-vdit, FullAttention)"][2], both["dense (diffusers)"][2])
    if lead:
        common.write_json("bench_context_parallel", {"env": info, "rows": rows, "full_vs_stock_rel_err": full_vs_stock})
        print(f"FullAttention vs diffusers' own Ulysses, relative error of the output: {full_vs_stock:.2e}")
        common.print_table(rows, [(k, k) for k in rows[0]], title=(
            f"{spec.name}: one transformer forward (median of {args.reps}; the slowest rank's time), "
            f"sparsity {args.sparsity}, blocks {spec.block}"))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny Wan on 2 processes (CPU + gloo without GPUs)")
    p.add_argument("--sparsity", type=float, default=0.8, help="AdaSpa's sparsity (0.8: density ~0.2)")
    p.add_argument("--reps", type=int, default=2, help="timed forwards of each kind")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards of each kind first (kernel compiles)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if "RANK" not in os.environ:
        if not args.smoke:
            raise SystemExit("launch with: torchrun --nproc_per_node 2 benchmarks/bench_context_parallel.py "
                             "(or --smoke, which starts its own 2 CPU processes)")
        return spawn_smoke(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
