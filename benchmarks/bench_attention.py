"""Our kernels beside their peers, in the same run, against the targets of the kernel issue.

Cases (bf16, B=1, random inputs in diffusers' layout; "random" layouts keep, per query-block row,
round(density * KB) key blocks at random with the diagonal block always kept, one pattern per head):

    wan-dense        block_sparse_attention on BlockLayout.dense (128)   vs cuDNN SDPA dense
    wan-lse          attention_with_lse                                  vs cuDNN SDPA dense
    wan-sparse128    block_sparse_attention, 10% random 128-blocks       vs compiled FlexAttention, same BlockMask
    wan-sparse64     block_sparse_attention, 20% random 64-blocks        vs compiled FlexAttention (BLOCK_M = BLOCK_N = 64)
    wan-mass         block_attention_mass: cached LSE at block 64 / 128, fused (lse=None) at 64 / 128
                     vs the cuDNN dense time (the dense call a search step replaces)
    cog-sparse128    as wan-sparse128 at CogVideoX1.5 (48 heads, D=64, 226 text + 44,880 video)
    cog-sparse64     as wan-sparse64 at CogVideoX1.5
    hunyuan-memory   block_sparse_attention, 10% random 128-blocks at HunyuanVideo (24 x 119,056):
                     time vs FlexAttention and peak extra memory vs (output + LSE)

Every case also checks our op (and the peer) against a float64 reference on the real inputs:
query blocks first / middle / last (the last crosses the sequence end) of heads 0 and H-1, over
all keys; relative-norm error must be < 1e-2 (bf16 operands land near 2e-3..5e-3).

    python benchmarks/bench_attention.py                        # all cases (H200: ~4 min)
    python benchmarks/bench_attention.py --cases wan-sparse64,cog-sparse64
    python benchmarks/bench_attention.py --block-n 64 --warps 4 --stages 3 --config-key 128,64
    python benchmarks/bench_attention.py --sweep                # tune the tile tables of this GPU (~5 min), written to kernels/tuning_tables.json
    python benchmarks/bench_attention.py --smoke [--sweep]      # tiny shapes; CPU if no CUDA

Targets (TARGETS below) are ratios speedup = peer ms / ours ms unless said otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py, next to this script)
import torch  # noqa: E402

CASES = (
    "wan-dense", "wan-lse", "wan-sparse128", "wan-sparse64", "wan-mass",
    "cog-sparse128", "cog-sparse64", "hunyuan-memory",
)
SWEEP_CASES = ("wan-sparse128", "wan-sparse64", "wan-lse")
SWEEP_CHOICES = SWEEP_CASES + ("wan-lse", "wan-mass64", "wan-mass128", "cog-sparse128", "cog-sparse64")
# wan-mass* tune the "mass" table, wan-lse and wan-dense "dense" (keyed by head_dim), the others "attention"
SPARSE_DENSITY = {128: 0.10, 64: 0.20}  # the layouts: 10% of 128-blocks, 20% of 64-blocks
TOL = 1e-2  # relative-norm error against float64
MEMORY_SLACK = 1.05  # peak extra memory may exceed output + LSE by 5%

# Targets: minimum speedup (peer ms / ours ms) per row. The peer is cuDNN SDPA dense for the dense
# and mass rows, compiled FlexAttention on the same BlockMask for the sparse rows.
TARGETS: dict[str, tuple[float, str]] = {
    # The kernel issue's targets. "dense" is absolute: effective TFLOP/s of ours (cuDNN measured 566).
    "dense": (500.0, ">= 500 TFLOP/s (all-blocks layout)"),
    "lse": (1 / 1.1, "within 1.1x of cuDNN dense"),
    "sparse128": (1.25, ">= 1.25x FlexAttention"),
    "sparse64": (1.5, ">= 1.5x FlexAttention-64"),
    "mass-lse": (1 / 0.6, "<= 0.6x cuDNN dense time"),
    "mass-fused": (1 / 1.2, "report only (<= 1.2x cuDNN dense time hoped)"),
}
ABSOLUTE_TFLOPS_TARGETS = {"dense"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list among {','.join(CASES)} (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, every path once, no timing claims")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-check", action="store_true", help="skip the float64 correctness checks")
    p.add_argument("--text-dense", action="store_true",
                   help="random layouts also keep every text row / column block (CogVideoX, Hunyuan)")
    p.add_argument("--cpu-flex", choices=("compile", "skip"), default="compile",
                   help="on the CPU: run compiled FlexAttention (slow) or skip it")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warmup, ms")
    p.add_argument("--rep", type=float, default=150, help="do_bench rep, ms (raised to >= 5 calls)")
    p.add_argument("--index-dtype", choices=["narrow", "int32"], default="narrow",
                   help="index lists of the random layouts: the compact default, or widened to int32 (measurement)")
    g = p.add_argument_group("kernel config overrides (kernels.tuning overrides of the 'attention' table before the runs)")
    g.add_argument("--block-n", type=int, default=None, help="BLOCK_N (clipped to KV_BLOCK by the launcher)")
    g.add_argument("--warps", type=int, default=None, help="num_warps")
    g.add_argument("--stages", type=int, default=None, help="num_stages")
    g.add_argument("--tma", choices=("on", "off"), default=None,
                   help="force kernels.attention.TMA_ENABLED (TMA tile loads on sm_90+; default: as the module says)")
    g.add_argument("--config-key", action="append", default=None, metavar="D,QBLOCK",
                   help="patch only this (head_dim, Q_BLOCK) entry; repeatable (default: every entry)")
    s = p.add_argument_group("sweep")
    s.add_argument("--sweep", action="store_true",
                   help="time block_sparse_attention for BLOCK_N 32/64/128 x warps 4/8 x stages 1-4 and print the best")
    s.add_argument("--sweep-cases", default=",".join(SWEEP_CASES),
                   help=f"comma list among {','.join(SWEEP_CHOICES)} (default: {','.join(SWEEP_CASES)})")
    s.add_argument("--sweep-rep", type=float, default=60, help="do_bench rep per config in the sweep, ms")
    s.add_argument("--sweep-top", type=int, default=3, help="configs re-timed (rep x 3) per case")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- context
@dataclasses.dataclass
class Ctx:
    args: argparse.Namespace
    device: torch.device
    shapes: dict
    bench: dict
    ops: object  # kernels.attention module
    perf: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    _inputs: dict = dataclasses.field(default_factory=dict)
    _cudnn: dict = dataclasses.field(default_factory=dict)

    @property
    def allow_cpu_flex(self) -> bool:
        return self.args.cpu_flex == "compile"

    def inputs(self, key: str):
        if key not in self._inputs:
            for other in list(self._inputs):  # one shape's tensors at a time (Hunyuan: 2.2 GB)
                del self._inputs[other]
            self._cudnn.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._inputs[key] = common.random_qkv(self.shapes[key], self.device, seed=1)
        return self._inputs[key]

    def cudnn_dense(self, key: str) -> common.Measured:
        """cuDNN SDPA dense at this shape, measured once per run and shared by the cases."""
        if key not in self._cudnn:
            q, k, v = self.inputs(key)
            self._cudnn[key] = common.measure(
                lambda: common.sdpa_fn("CUDNN_ATTENTION", q, k, v), self.device,
                keep_out=not self.args.no_check, label=f"{key}/cudnn", **self.bench)
        return self._cudnn[key]

    def layout(self, key: str, block: int, density: float, seed: int = 2):
        layout = common.random_block_layout(
            self.shapes[key], block, density, self.device, seed=seed, text_dense=self.args.text_dense)
        if self.args.index_dtype == "int32":  # measurement: the compact lists widened back to int32
            layout = dataclasses.replace(
                layout, kv_indices=layout.kv_indices.int(), full_kv_indices=layout.full_kv_indices.int(),
                tile_ids=layout.tile_ids.int(), check=False)
        return layout


def _target(kind: str, speedup: float | None, ours_tflops: float | None = None) -> tuple[str, bool | None]:
    value, text = TARGETS[kind]
    measured = ours_tflops if kind in ABSOLUTE_TFLOPS_TARGETS else speedup
    return text, (None if measured is None else measured >= value)


def add_perf(ctx: Ctx, case: str, what: str, ours: common.Measured, peer: common.Measured | None,
             ours_flops: float, peer_flops: float | None, kind: str | None, notes: str = "") -> dict:
    speedup = (peer.ms / ours.ms) if (peer is not None and peer.ok and ours.ok) else None
    target, met = _target(kind, speedup, common.tflops(ours_flops, ours.ms)) if kind else ("-", None)
    if ctx.args.smoke:
        met = None  # no timing claims in a smoke run
    status = "; ".join(x for x in (
        f"ours {ours.status()}" if ours.status() else "",
        f"peer {peer.status()}" if peer is not None and peer.status() else "",
        notes) if x)
    row = {
        "case": case, "what": what,
        "ours_ms": ours.ms, "peer_ms": None if peer is None else peer.ms,
        "ours_tflops": common.tflops(ours_flops, ours.ms),
        "peer_tflops": None if peer is None else common.tflops(peer_flops, peer.ms),
        "speedup": speedup, "target": target, "met": met, "notes": status,
    }
    ctx.perf.append(row)
    print(f"{case:16s} ours {common.fmt(ours.ms):>9s} ms  peer {common.fmt(row['peer_ms']):>9s} ms  "
          f"speedup {common.fmt(speedup):>6s}  target {target}  met {common.fmt(met)}  {status}", flush=True)
    return row


def add_check(ctx: Ctx, case: str, op: str, err: float | None, peer_name: str = "", peer_err: float | None = None,
              notes: str = "") -> None:
    met = None if err is None else err < TOL
    ctx.checks.append({"case": case, "op": op, "err": err, "peer": peer_name, "peer_err": peer_err,
                       "tol": TOL, "met": met, "notes": notes})
    print(f"{case:16s} check {op}: rel err {common.fmt(err, 5)} (peer {peer_name} {common.fmt(peer_err, 5)})  "
          f"{'ok' if met else 'FAIL' if met is False else ''} {notes}", flush=True)


def _guard(ctx: Ctx, case: str, op: str, fn: Callable[[], None]) -> None:
    """Run a correctness check; an exception becomes a failed check row."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        add_check(ctx, case, op, None, notes=f"check error: {common.short_error(exc)}")


# --------------------------------------------------------------------------- checks
def check_attention(ctx: Ctx, case: str, op: str, q, k, v, layout, block: int, ours_fn, peer_name="", peer_out=None):
    """ours_fn() -> (out, lse). Compares chosen rows of out (and lse) with float64."""
    shape = ctx.shapes[case_shape(case)]
    heads = common.check_heads(shape.h)
    qblocks = common.check_qblocks(common.cdiv(shape.s, block))
    rows, ref_out, ref_lse = common.ref_attention_rows(q, k, v, layout, heads, qblocks, block)
    out, lse = ours_fn()
    common.sync(ctx.device)
    err = common.rel_err(common.take_rows(out, heads, rows), ref_out)
    lse_err = float((common.take_rows(lse, heads, rows).double() - ref_lse).abs().max())
    peer_err = None if peer_out is None else common.rel_err(common.take_rows(peer_out, heads, rows), ref_out)
    add_check(ctx, case, op, err, peer_name, peer_err,
              notes=f"lse max abs err {lse_err:.2e}; heads {heads}, q-blocks {qblocks} of {block}")


def check_mass(ctx: Ctx, case: str, op: str, q, k, lse, block: int, mass):
    shape = ctx.shapes[case_shape(case)]
    heads = common.check_heads(shape.h)
    qblocks = common.check_qblocks(common.cdiv(shape.s, block))
    ref = common.ref_mass_rows(q, k, lse, heads, qblocks, block)
    hs = torch.tensor(heads, device=mass.device)
    got = mass.index_select(1, hs)[:, :, qblocks]
    row_sums = got.sum(-1)
    add_check(ctx, case, op, common.rel_err(got, ref),
              notes=f"rows of mass sum to {float(row_sums.min()):.1f}..{float(row_sums.max()):.1f} "
                    f"(block rows x coverage); heads {heads}, q-blocks {qblocks}")


def case_shape(case: str) -> str:
    return {"wan": "wan480", "cog": "cogvideox15", "hunyuan": "hunyuan720"}[case.split("-")[0]]


# --------------------------------------------------------------------------- cases
def run_dense(ctx: Ctx, case: str) -> None:
    key = case_shape(case)
    shape, (q, k, v), ops = ctx.shapes[key], ctx.inputs(key), ctx.ops
    cudnn = ctx.cudnn_dense(key)
    flops = common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d)
    if case.endswith("dense"):
        layout = ops.BlockLayout.dense(shape.s, 128, device=ctx.device)
        ours = common.measure(lambda: (lambda: ops.block_sparse_attention(q, k, v, layout)), ctx.device,
                              label=case, **ctx.bench)
        add_perf(ctx, case, "block_sparse_attention, all blocks (128)", ours, cudnn,
                 common.layout_flops(layout, shape.b, shape.h, shape.d), flops, "dense")
        if not ctx.args.no_check:
            _guard(ctx, case, "block_sparse_attention(dense)", lambda: check_attention(
                ctx, case, "block_sparse_attention(dense)", q, k, v, None, 128,
                lambda: ops.block_sparse_attention(q, k, v, layout, return_lse=True), "cuDNN", cudnn.out))
    else:
        ours = common.measure(lambda: (lambda: ops.attention_with_lse(q, k, v)), ctx.device, label=case, **ctx.bench)
        add_perf(ctx, case, "attention_with_lse", ours, cudnn, flops, flops, "lse")
        if not ctx.args.no_check:
            _guard(ctx, case, "attention_with_lse", lambda: check_attention(
                ctx, case, "attention_with_lse", q, k, v, None, 128,
                lambda: ops.attention_with_lse(q, k, v), "cuDNN", cudnn.out))


def run_sparse(ctx: Ctx, case: str) -> None:
    key = case_shape(case)
    shape, (q, k, v), ops = ctx.shapes[key], ctx.inputs(key), ctx.ops
    block = 64 if case.endswith("64") else 128
    density = SPARSE_DENSITY[block]
    layout = ctx.layout(key, block, density)
    flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
    keep = not ctx.args.no_check
    ours = common.measure(lambda: (lambda: ops.block_sparse_attention(q, k, v, layout)), ctx.device,
                          label=case, **ctx.bench)
    flex_holder: dict = {}  # one compiled callable: a second BlockMask would recompile

    def make_flex():
        flex_holder["fn"] = common.flex_fn(q, k, v, layout, allow_cpu=ctx.allow_cpu_flex)
        return flex_holder["fn"]

    flex = common.measure(make_flex, ctx.device, keep_out=keep, label=f"{case}/flex", **ctx.bench)
    what = f"block_sparse_attention, {density:.0%} random {block}-blocks (actual {layout.density():.3f})"
    notes = ""
    if case.startswith("hunyuan"):
        notes = memory_notes(ctx, q, k, v, layout, ours, flex, flex_holder.get("fn"))
    add_perf(ctx, case, what, ours, flex, flops, flops, f"sparse{block}", notes)
    if case.startswith("hunyuan"):
        add_memory_row(ctx, case, q, layout)
    if keep:
        _guard(ctx, case, f"block_sparse_attention({block})", lambda: check_attention(
            ctx, case, f"block_sparse_attention({block})", q, k, v, layout, block,
            lambda: ops.block_sparse_attention(q, k, v, layout, return_lse=True), "Flex", flex.out))
    flex.out = None


_MEM: dict = {}


def memory_notes(ctx: Ctx, q, k, v, layout, ours, flex, flex_call) -> str:
    ops = ctx.ops
    mib = 2.0**20
    ours_peak = peer_peak = None
    if ours.ok:
        ours_peak = common.peak_memory_bytes(lambda: ops.block_sparse_attention(q, k, v, layout), ctx.device)
    if flex.ok and flex_call is not None:
        try:
            peer_peak = common.peak_memory_bytes(flex_call, ctx.device)
        except Exception as exc:  # noqa: BLE001
            print(f"flex peak memory failed: {common.short_error(exc)}", file=sys.stderr)
    _MEM.update(ours=ours_peak, peer=peer_peak)
    return (f"peak extra memory ours {common.fmt(None if ours_peak is None else ours_peak / mib, 1)} MiB, "
            f"Flex {common.fmt(None if peer_peak is None else peer_peak / mib, 1)} MiB")


def add_memory_row(ctx: Ctx, case: str, q, layout) -> None:
    """Peak extra memory of block_sparse_attention vs the bytes it must return (output + LSE)."""
    need = q.numel() * q.element_size() + q.shape[0] * q.shape[1] * q.shape[2] * 4
    ours, peer = _MEM.get("ours"), _MEM.get("peer")
    mib = 2.0**20
    met = None if ours is None or ctx.args.smoke else ours <= MEMORY_SLACK * need
    row = {
        "case": case, "what": "peak extra memory (MiB) of block_sparse_attention 10%",
        "ours_ms": None, "peer_ms": None, "ours_tflops": None, "peer_tflops": None, "speedup": None,
        "target": f"<= {MEMORY_SLACK:.2f}x (out + lse) = {MEMORY_SLACK * need / mib:.1f} MiB", "met": met,
        "notes": (f"ours {common.fmt(None if ours is None else ours / mib, 1)} MiB, "
                  f"Flex {common.fmt(None if peer is None else peer / mib, 1)} MiB, out + lse {need / mib:.1f} MiB"
                  + ("" if ctx.device.type == "cuda" else " (no CUDA: not measured)")),
        "ours_peak_bytes": ours, "peer_peak_bytes": peer, "needed_bytes": need,
    }
    ctx.perf.append(row)
    print(f"{case:16s} memory: {row['notes']}  met {common.fmt(met)}", flush=True)


def run_mass(ctx: Ctx, case: str) -> None:
    key = case_shape(case)
    shape, (q, k, v), ops = ctx.shapes[key], ctx.inputs(key), ctx.ops
    cudnn = ctx.cudnn_dense(key)
    lse = None
    try:
        _, lse = ops.attention_with_lse(q, k, v)
    except Exception as exc:  # noqa: BLE001
        print(f"attention_with_lse failed, cached-LSE mass rows will fail: {common.short_error(exc)}", file=sys.stderr)
    for block, fused in itertools.product((64, 128), (False, True)):
        name = f"{case}{block}-{'fused' if fused else 'lse'}"
        passes = 2 if fused else 1
        flops = common.mass_flops(shape.b, shape.h, shape.s, shape.s, shape.d, passes)
        lse_in = None if fused else lse
        if not fused and lse is None:
            ours = common.Measured(error="no cached LSE (attention_with_lse failed)")
        else:
            ours = common.measure(lambda: (lambda: ops.block_attention_mass(q, k, lse_in, block)), ctx.device,
                                  label=name, **ctx.bench)
        what = (f"block_attention_mass({block}, " + ("lse=None: fused LSE + mass" if fused else "cached LSE") + ")")
        add_perf(ctx, name, what, ours, cudnn, flops, common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d),
                 "mass-fused" if fused else "mass-lse",
                 notes=f"ours TFLOP/s counts {passes} Q.K^T pass{'es' if passes > 1 else ''}")
        if not ctx.args.no_check and ours.ok:
            def _check(block=block, lse_in=lse_in, name=name, fused=fused):
                mass, lse_used = ops.block_attention_mass(q, k, lse_in, block, return_lse=True)
                check_mass(ctx, name, f"block_attention_mass({block}, {'fused' if fused else 'cached lse'})",
                           q, k, lse_in, block, mass)
            _guard(ctx, name, f"block_attention_mass({block})", _check)


RUNNERS = {
    "wan-dense": run_dense, "wan-lse": run_dense, "wan-sparse128": run_sparse, "wan-sparse64": run_sparse,
    "wan-mass": run_mass, "cog-sparse128": run_sparse, "cog-sparse64": run_sparse, "hunyuan-memory": run_sparse,
}


# --------------------------------------------------------------------------- config overrides


def current_config(ops, key, table: str, device) -> tuple[int, int, int]:
    """The (BLOCK_N, num_warps, num_stages) the launchers use now for ``key`` of ``table``."""
    if device.type != "cuda":
        return tuple(ops.tuning.INTERPRETER)
    return tuple(ops.tuning.config(table, tuple(key) if isinstance(key, tuple) else (key,), device))


def patch_config(ops, key, block_n=None, warps=None, stages=None, device=None, table: str = "attention") -> None:
    """Make the launchers use this config for ``key`` of ``table`` (kernels.tuning overrides, in
    memory). On the CPU interpreter the launchers read tuning.INTERPRETER instead, so that is
    patched too (smoke runs then execute the same tile sizes; warps / stages mean nothing there)."""
    key = tuple(key) if isinstance(key, tuple) else (key,)
    cfg = list(current_config(ops, key, table, device) if device is not None and device.type == "cuda"
               else ops.tuning.GENERIC)
    for i, val in enumerate((block_n, warps, stages)):
        if val is not None:
            cfg[i] = val
    ops.tuning.override(table, key, tuple(cfg))
    if device is not None and device.type == "cpu":
        interp = list(ops.tuning.INTERPRETER)
        for i, val in enumerate((block_n, warps, stages)):
            if val is not None:
                interp[i] = val
        ops.tuning.INTERPRETER = tuple(interp)


def apply_overrides(ctx: Ctx) -> None:
    a = ctx.args
    if a.tma is not None:
        if not hasattr(ctx.ops, "TMA_ENABLED"):
            raise SystemExit("kernels.attention has no TMA_ENABLED switch: --tma cannot be applied")
        ctx.ops.TMA_ENABLED = a.tma == "on"
    if a.block_n is None and a.warps is None and a.stages is None:
        return
    keys = ([tuple(int(x) for x in s.split(",")) for s in a.config_key] if a.config_key
            else [(128, 128), (128, 64), (64, 128), (64, 64)])
    for key in keys:
        patch_config(ctx.ops, key, a.block_n, a.warps, a.stages, ctx.device)


# --------------------------------------------------------------------------- sweep
@dataclasses.dataclass
class SweepCase:
    name: str
    table: str  # which kernels.tuning table the config patches: attention, dense or mass
    key: tuple  # (head_dim, Q_BLOCK)
    kv_block: int
    fn: Callable[[], object]
    flops: float
    error_of: Callable[[object], float]  # result -> rel err vs float64 on the checked rows


def build_sweep_case(ctx: Ctx, case: str) -> SweepCase:
    ops = ctx.ops
    key_shape = case_shape(case)
    shape, (q, k, v) = ctx.shapes[key_shape], ctx.inputs(key_shape)
    heads = common.check_heads(shape.h)
    dense = common.dense_flops(shape.b, shape.h, shape.s, shape.s, shape.d)
    if case.startswith("wan-mass"):
        block = int(case[len("wan-mass"):])
        _, lse = ops.attention_with_lse(q, k, v)
        qblocks = common.check_qblocks(common.cdiv(shape.s, block))
        ref = common.ref_mass_rows(q, k, lse, heads, qblocks, block)
        hs = torch.tensor(heads, device=q.device)
        return SweepCase(
            case, "mass", (shape.d, block), block,
            lambda: ops.block_attention_mass(q, k, lse, block),
            common.mass_flops(shape.b, shape.h, shape.s, shape.s, shape.d),
            lambda mass: common.rel_err(mass.index_select(1, hs)[:, :, qblocks], ref))
    if case == "wan-dense":
        block, layout = 128, ops.BlockLayout.dense(shape.s, 128, device=ctx.device)
        ref_layout, flops = None, dense
        fn = lambda: ops.block_sparse_attention(q, k, v, layout)  # noqa: E731
        qblock = block
    elif case == "wan-lse":
        block, ref_layout, flops = 128, None, dense
        fn = lambda: ops.attention_with_lse(q, k, v)[0]  # noqa: E731
        qblocks = common.check_qblocks(common.cdiv(shape.s, block))
        rows, ref_out, _ = common.ref_attention_rows(q, k, v, ref_layout, heads, qblocks, block)
        return SweepCase(case, "dense", shape.d, block, fn, flops,
                         lambda out: common.rel_err(common.take_rows(out, heads, rows), ref_out))
    else:
        block = 64 if case.endswith("64") else 128
        layout = ref_layout = ctx.layout(key_shape, block, SPARSE_DENSITY[block])
        flops = common.layout_flops(layout, shape.b, shape.h, shape.d)
        fn = lambda: ops.block_sparse_attention(q, k, v, layout)  # noqa: E731
        qblock = block
    qblocks = common.check_qblocks(common.cdiv(shape.s, block))
    rows, ref_out, _ = common.ref_attention_rows(q, k, v, ref_layout, heads, qblocks, block)
    # A complete layout runs the index-free dense loop, which reads the "dense" table.
    table, key = ("dense", shape.d) if case == "wan-dense" else ("attention", (shape.d, qblock))
    return SweepCase(case, table, key, block, fn, flops,
                     lambda out: common.rel_err(common.take_rows(out, heads, rows), ref_out))


def sweep_grid(kv_block: int, smoke: bool) -> list[tuple[int, int, int]]:
    block_ns = [bn for bn in (32, 64, 128) if kv_block % bn == 0]
    if smoke:
        return [(bn, 4, 1) for bn in block_ns]  # interpreter: warps / stages mean nothing there
    return list(itertools.product(block_ns, (4, 8), (1, 2, 3, 4)))


def _cfg(r: dict) -> tuple[int, int, int]:
    return (r["block_n"], r["warps"], r["stages"])


def sweep(ctx: Ctx) -> None:
    ops, args = ctx.ops, ctx.args
    cases = [c.strip() for c in args.sweep_cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in SWEEP_CHOICES]
    if bad:
        raise SystemExit(f"unknown sweep case(s) {bad}; choose among {SWEEP_CHOICES}")
    saved_interp = ops.tuning.INTERPRETER

    def restore():
        ops.tuning.clear_overrides()
        ops.tuning.INTERPRETER = saved_interp

    results: list[dict] = []
    best_rows: list[dict] = []
    for case in cases:
        t_case = time.time()
        try:
            sc = build_sweep_case(ctx, case)
        except Exception as exc:  # noqa: BLE001
            print(f"sweep {case}: set-up failed: {common.short_error(exc, 400)}", file=sys.stderr)
            best_rows.append({"case": case, "best": f"set-up failed: {common.short_error(exc)}"})
            continue
        default = current_config(ops, sc.key, sc.table, ctx.device)
        grid = sweep_grid(sc.kv_block, args.smoke)
        print(f"\nsweep {case}: {sc.table}{sc.key}, {len(grid)} configs (default {default})", flush=True)
        case_rows = []
        for bn, w, st in grid:
            patch_config(ops, sc.key, bn, w, st, ctx.device, sc.table)
            t0 = time.time()
            row = {"case": case, "table": sc.table, "key": sc.key, "block_n": bn, "warps": w, "stages": st,
                   "ms": None, "tflops": None, "err": None, "error": None}
            try:
                res = sc.fn()
                common.sync(ctx.device)
                row["err"] = sc.error_of(res)
                del res
                if row["err"] < TOL:
                    row["ms"] = common.bench_ms(sc.fn, ctx.device, warmup=10, rep=args.sweep_rep, min_reps=3)
                    row["tflops"] = common.tflops(sc.flops, row["ms"])
                else:
                    row["error"] = f"wrong result: rel err {row['err']:.2e}"
            except Exception as exc:  # noqa: BLE001 - out of resources etc.
                row["error"] = common.short_error(exc)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
            print(f"  BLOCK_N {bn:3d} warps {w} stages {st}: {common.fmt(row['ms']):>8s} ms "
                  f"{common.fmt(row['tflops']):>7s} TFLOP/s  err {common.fmt(row['err'], 5)} "
                  f"{row['error'] or ''} ({time.time() - t0:.1f} s)", flush=True)
            case_rows.append(row)
        ok = sorted((r for r in case_rows if r["ms"] is not None), key=lambda r: r["ms"])
        # Re-time the leaders (and the default) with a longer rep, twice: a gap smaller than the
        # spread is noise.
        leaders = ok[: args.sweep_top]
        default_row = next((r for r in case_rows if default and _cfg(r) == tuple(default[:3])), None)
        if default_row is not None and default_row["ms"] is not None and default_row not in leaders:
            leaders = leaders + [default_row]
        for r in leaders:
            patch_config(ops, sc.key, r["block_n"], r["warps"], r["stages"], ctx.device, sc.table)
            again = [common.bench_ms(sc.fn, ctx.device, warmup=25, rep=3 * args.sweep_rep) for _ in range(2)]
            r["ms_confirm"] = min(again)
            r["spread"] = abs(again[0] - again[1])
        restore()
        confirmed = sorted(leaders, key=lambda r: r["ms_confirm"])
        if confirmed:
            b = confirmed[0]
            best_rows.append({
                "case": case, "table": sc.table, "key": str(sc.key), "best": str(_cfg(b)),
                "ms": b["ms_confirm"], "spread": b["spread"], "tflops": common.tflops(sc.flops, b["ms_confirm"]),
                "default": str(tuple(default[:3])) if default else "-",
                "default_ms": None if default_row is None else default_row.get("ms_confirm", default_row["ms"]),
                "runner_up": ", ".join(f"{_cfg(r)} {r['ms_confirm']:.3f}" for r in confirmed[1:]),
                "sweep_s": time.time() - t_case,
            })
        else:
            best_rows.append({"case": case, "table": sc.table, "key": str(sc.key), "best": "none ran",
                              "sweep_s": time.time() - t_case})
        results.extend(case_rows)
    restore()
    ctx.sweep_results = results  # type: ignore[attr-defined]
    ctx.sweep_best = best_rows  # type: ignore[attr-defined]
    ctx.sweep_joint = joint_best(results)  # type: ignore[attr-defined]
    for case in cases:
        common.print_table(
            sorted((r for r in results if r["case"] == case), key=lambda r: (r["ms"] is None, r["ms"] or 0)),
            [("block_n", "BLOCK_N"), ("warps", "warps"), ("stages", "stages"), ("ms", "ms"),
             ("ms_confirm", "ms re-timed"), ("spread", "spread"), ("tflops", "TFLOP/s"), ("err", "rel err"),
             ("error", "error")],
            title=f"sweep {case}")
    if ctx.sweep_joint:
        common.print_table(ctx.sweep_joint, [
            ("table", "table"), ("key", "(D, Q_BLOCK)"), ("cases", "cases"), ("best", "joint best"),
            ("score", "geo-mean of ms / case best"), ("per_case", "ms per case")],
            title="Joint best per key (cases that share a table entry must agree on one config)")
        write_tuning_table(ctx)


def write_tuning_table(ctx: Ctx) -> None:
    """Write the joint best configs into kernels/tuning_tables.json under this GPU's compute
    capability (other GPUs and keys kept), and a copy under the output folder."""
    if ctx.device.type != "cuda" or ctx.args.smoke:
        print("\n(smoke / CPU sweep: the tuning table is not written)")
        return
    import ast
    import shutil

    entries: dict[str, dict] = {}
    for r in ctx.sweep_joint:
        key = ast.literal_eval(r["key"])
        entries.setdefault(r["table"], {})[tuple(key) if isinstance(key, tuple) else (key,)] = \
            ast.literal_eval(r["best"])
    cap = torch.cuda.get_device_capability(ctx.device)
    path = ctx.ops.tuning.write_tables(cap, torch.cuda.get_device_name(ctx.device), entries,
                                       source=f"bench_attention.py --sweep, {time.strftime('%Y-%m-%d')}, commit "
                                              f"{common.env_header(ctx.device)['commit'][:12]}")
    copy = common.out_dir() / "tuning_tables.json"
    shutil.copyfile(path, copy)
    print(f"\ntuning table for sm_{cap[0]}{cap[1]} written to {path} (copy: {copy}):")
    for kind, values in entries.items():
        for key, cfg in values.items():
            print(f"    {kind} {key}: {cfg}")


def joint_best(results: list[dict]) -> list[dict]:
    """Per (table, key): the config with the smallest geometric mean of ms / (best ms of its case)
    over the cases that share the key (e.g. wan-dense and wan-sparse128 both use (128, 128))."""
    out = []
    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if r["ms"] is not None:
            groups.setdefault((r["table"], str(r["key"])), {}).setdefault(r["case"], {})[_cfg(r)] = r["ms"]
    for (table, key), per_case in groups.items():
        cfgs = set.intersection(*(set(c) for c in per_case.values()))
        if not cfgs:
            continue
        best_of = {case: min(c.values()) for case, c in per_case.items()}

        def score(cfg):
            return math.exp(sum(math.log(per_case[c][cfg] / best_of[c]) for c in per_case) / len(per_case))

        win = min(cfgs, key=score)
        out.append({"table": table, "key": str(key), "cases": ", ".join(per_case), "best": str(win),
                    "score": score(win), "per_case": ", ".join(f"{c} {per_case[c][win]:.3f}" for c in per_case)})
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.setup(args.device)
    import kernels.attention as ops  # after setup(): TRITON_INTERPRET must be set before triton loads

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        raise SystemExit(f"unknown case(s) {bad}; choose among {CASES}")
    ctx = Ctx(args=args, device=device, shapes=common.shapes_for(args.smoke),
              bench={"warmup": args.warmup, "rep": args.rep}, ops=ops)
    apply_overrides(ctx)
    header = common.env_header(device, smoke=args.smoke, extra={
        "script": "bench_attention.py", "args": vars(args),
        "tuning_table": str(ops.tuning.TABLE_FILE),
        "TMA_ENABLED": getattr(ops, "TMA_ENABLED", "n/a"),
    })
    common.print_header(header, "sparse-vdit kernels vs peers" + (" (sweep)" if args.sweep else ""))
    t_start = time.time()

    if args.sweep:
        sweep(ctx)
        elapsed = time.time() - t_start
        path = common.write_json("bench_attention_sweep", {
            "header": header, "results": ctx.sweep_results, "best": ctx.sweep_best, "joint": ctx.sweep_joint,
            "elapsed_s": elapsed})
        print(f"\nJSON: {path}\nelapsed: {elapsed:.0f} s")
        common.print_table(ctx.sweep_best, [
            ("case", "case"), ("table", "table"), ("key", "(D, Q_BLOCK)"), ("best", "best (BLOCK_N, warps, stages)"), ("ms", "ms"),
            ("spread", "spread ms"), ("tflops", "TFLOP/s"), ("default", "default"), ("default_ms", "default ms"),
            ("runner_up", "runners-up ms"), ("sweep_s", "sweep s")],
            title=f"Sweep best ({header['gpu']}, triton {header['triton']}, commit {header['commit'][:12]})")
        return 0

    for case in cases:
        t0 = time.time()
        try:
            RUNNERS[case](ctx, case)
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
            print(f"case {case} crashed: {common.short_error(exc, 400)}", file=sys.stderr)
            ctx.perf.append({"case": case, "what": "case crashed", "notes": common.short_error(exc), "met": False})
        print(f"  ({case}: {time.time() - t0:.1f} s)", flush=True)

    elapsed = time.time() - t_start
    path = common.write_json("bench_attention", {
        "header": header, "perf": ctx.perf, "checks": ctx.checks, "targets": TARGETS, "elapsed_s": elapsed})
    print(f"\nJSON: {path}\nelapsed: {elapsed:.0f} s")
    if ctx.checks:
        common.print_table(ctx.checks, [
            ("case", "case"), ("op", "op"), ("err", "rel err vs fp64"), ("peer", "peer"),
            ("peer_err", "peer rel err"), ("met", f"< {TOL:g}"), ("notes", "notes")],
            title="Correctness (float64 reference on the real inputs' rows)")
    common.print_table(ctx.perf, [
        ("case", "case"), ("what", "ours"), ("ours_ms", "ours ms"), ("peer_ms", "peer ms"),
        ("ours_tflops", "ours TFLOP/s"), ("peer_tflops", "peer TFLOP/s"), ("speedup", "speedup"),
        ("target", "target"), ("met", "met"), ("notes", "notes")],
        title=f"Kernels vs peers ({header['gpu']}, torch {header['torch']}, triton {header['triton']}, "
              f"commit {header['commit'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
