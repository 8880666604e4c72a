"""AdaSpa on full-size random-weight Wan2.1 transformers: per-step times of every phase against
diffusers' default attention, the 50-step generation computed from them, the search overhead,
attention-only times of one layer, and the cache memory.

Models are built from their configs (no download) in bf16 on the GPU, random weights:
Wan2.1-1.3B (30 layers, 12 heads x 128, ffn 8960) at 480p 81 frames (latent [1, 16, 21, 60, 104],
32,760 tokens) and Wan2.1-14B (40 layers, 40 heads x 128, ffn 13824) at 720p 81 frames (latent
[1, 16, 21, 90, 160], 75,600 tokens); text embeddings [1, 512, 4096].

Per model, one transformer forward of each kind is timed (CUDA events around the forward,
median of --reps after --warmup runs that compile the kernels):
    dense (stock)    diffusers' stock processors: its default attention (SDPA, cuDNN on the H200)
    dense (ours)     a warm-up step through our processors (dense through dispatch_attention_fn)
    first search     dense attention with LSE (the step's output), block mass, selection
    cached search    block mass with the LSE cached at the first search, selection, sparse attention
    sparse           block-sparse attention on the selection (index lists rebuilt from the bitmask)
The 50-step totals are COMPUTED from these per-step times for the default schedule (10 warm-up
steps, searches at 10 and 30, 38 sparse steps), two forwards per step (CFG as separate calls, as
WanPipeline does). Search overhead = 2 x [(first search - dense) + (cached search - sparse)], as a
share of the dense generation (50 x 2 stock dense steps); the issue's target is <= 5%.

    python benchmarks/bench_adaspa.py                  # both models (H200: about 6 minutes)
    python benchmarks/bench_adaspa.py --model 1.3b     # or 14b, or proxy (the proxy's architecture at 32,256 tokens)
    python benchmarks/bench_adaspa.py --memory         # cache memory at the paper's shapes, CPU, seconds
    python benchmarks/bench_adaspa.py --smoke          # a tiny Wan; CPU interpreter without CUDA
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

MIB = 1 << 20
DEFAULT_BLOCK = 64
SMOKE_CPU_BLOCK = 16  # the tiny model's 72 tokens span 5 blocks
OVERHEAD_TARGET = 0.05
DEFAULT_STEPS = 50
CFG_FORWARDS = 2  # cond and uncond as separate forwards per step
WAN_COMMON = dict(
    patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One transformer to time: its config and its inputs' shapes."""

    key: str
    name: str
    config: dict
    latent: tuple[int, int, int, int, int]  # [B, C, T, H, W]
    text: tuple[int, int, int]  # [B, L, text_dim]

    @property
    def heads(self) -> int:
        return self.config["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.config["attention_head_dim"]

    @property
    def layers(self) -> int:
        return self.config["num_layers"]

    @property
    def tokens(self) -> int:
        _, _, t, h, w = self.latent
        pt, ph, pw = self.config["patch_size"]
        return (t // pt) * (h // ph) * (w // pw)


MODELS = {
    "1.3b": ModelSpec("1.3b", "Wan2.1-1.3B 480p", dict(WAN_COMMON, num_attention_heads=12, attention_head_dim=128,
                                                       ffn_dim=8960, num_layers=30), (1, 16, 21, 60, 104), (1, 512, 4096)),
    "14b": ModelSpec("14b", "Wan2.1-14B 720p", dict(WAN_COMMON, num_attention_heads=40, attention_head_dim=128,
                                                     ffn_dim=13824, num_layers=40), (1, 16, 21, 90, 160), (1, 512, 4096)),
    # The proxy's architecture (pipelines.proxy.model.PROXY_CONFIG) at its evaluation size, 81 x 128 x 192 pixels
    # (space-to-depth latent [1, 48, 21, 64, 96], 32,256 tokens), 16 text tokens; random weights time the same.
    "proxy": ModelSpec("proxy", "proxy v2 81x128x192", dict(WAN_COMMON, in_channels=48, out_channels=48, text_dim=64,
                                                             num_attention_heads=4, attention_head_dim=64, ffn_dim=1024,
                                                             num_layers=10), (1, 48, 21, 64, 96), (1, 16, 64)),
}
SMOKE_MODEL = ModelSpec("smoke", "tiny Wan (smoke)", dict(WAN_COMMON, num_attention_heads=2, attention_head_dim=64,
                                                          ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32,
                                                          rope_max_seq_len=64), (1, 16, 3, 8, 12), (1, 16, 32))

# Cache memory per CFG branch at the papers' shapes: (name, attention layers, heads, tokens, text tokens, text first).
MEMORY_SHAPES = [
    ("HunyuanVideo 720p 129f", 60, 24, 119_056, 256, False),
    ("Wan2.1-14B 720p", 40, 40, 75_600, 0, False),
    ("Wan2.1-1.3B 480p", 30, 12, 32_760, 0, False),
    ("CogVideoX1.5 768x1360 81f", 42, 48, 45_106, 226, True),
]
# Steps of one timed generation with warm-up 1 and searches at 1 and 2 (explicit schedule).
STEP_KINDS = ("dense (ours)", "first search", "cached search", "sparse", "sparse")


# --------------------------------------------------------------------------- memory (no GPU)
def memory_rows(sparsity: float, block: int, shapes=MEMORY_SHAPES) -> list[dict]:
    """Bytes per CFG branch of what an AdaSpaState holds, and of the alternatives not taken."""
    from adaspa.search import BlockGeometry, keep_count, tier_sparsities
    from adaspa.state import cache_bytes

    rows = []
    for name, layers, heads, tokens, text, text_first in shapes:
        held = cache_bytes(layers=layers, heads=heads, seq_len=tokens, block_size=block)
        geometry = BlockGeometry(tokens, block, head=text if text_first else 0, tail=0 if text_first else text)
        qb = geometry.num_blocks
        width = geometry.list_width(keep_count(tier_sparsities(sparsity)[0], geometry.selectable))
        rows.append({
            "shape": f"{name}: {layers} layers x {heads} heads x {tokens:,} tokens, blocks {block}",
            "LSE fp32 MiB": held["lse"] / MIB,
            "selection bitmask MiB": held["selection"] / MIB,
            "per-head MiB": held["per_head"] / MIB,
            "total MiB": held["total"] / MIB,
            "after last search MiB": (held["total"] - held["lse"]) / MIB,
            "alt: LSE fp16 MiB (overflows past 65504)": held["lse"] / 2 / MIB,
            "alt: int16 lists MiB (width)": f"{layers * heads * qb * (2 * width + 4) / MIB:.1f} ({width})",
            "alt: int32 full-width lists MiB": layers * heads * qb * (4 * qb + 4) / MIB,
        })
    return rows


def check_memory_formula(device: torch.device) -> dict:
    """A real AdaSpaState after a first search at a small shape holds exactly what cache_bytes says."""
    from adaspa import AdaSpaAttention, AdaSpaState, adaspa_attention
    from adaspa.state import cache_bytes

    block = SMOKE_CPU_BLOCK if device.type == "cpu" else DEFAULT_BLOCK
    shape = common.Shape("mem", "memory check", 1, 2, 7 * block + 5, 64)
    q, k, v = common.random_qkv(shape, device)
    cfg = AdaSpaAttention(block_size=block, warmup_steps=0, search_steps=(0, 1), schedule_steps=None)
    state = AdaSpaState()
    for layer in range(2):
        adaspa_attention(q, k, v, state, step=0, config=cfg, layer=layer)
    want = cache_bytes(layers=2, heads=shape.h, seq_len=shape.s, block_size=block)["total"]
    return {"state bytes": state.nbytes(), "cache_bytes": want, "equal": state.nbytes() == want}


# --------------------------------------------------------------------------- models
def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype, cls: str = "WanTransformer3DModel"):
    """The diffusers transformer ``cls`` from ``spec.config``, random weights initialised on ``device``,
    in ``dtype`` but for the modules diffusers keeps in float32 (as ``from_pretrained(torch_dtype=...)``
    does)."""
    import diffusers

    model_cls = getattr(diffusers, cls)
    build_on, build_dtype = device, torch.float32
    if device.type == "cuda":
        # The float32 build must fit beside what the GPU holds already; else build in ``dtype`` on
        # the GPU (random weights: drawing them in bf16 changes nothing a timing sees), else on the
        # CPU and move the cast model (LTX-2: 75.5 GB in float32 during the build, 37.8 GB in bf16).
        try:  # count the parameters without building them
            with torch.device("meta"):
                params = sum(p.numel() for p in model_cls(**spec.config).parameters())
        except Exception:  # noqa: BLE001 - a model whose __init__ cannot run on meta: build where asked
            params = 0
        free, _ = torch.cuda.mem_get_info(device)
        if params * 4 > 0.9 * free:
            if params * dtype.itemsize <= 0.9 * free:
                build_dtype = dtype
                where = f"built in {dtype} on the GPU"
            else:
                build_on = torch.device("cpu")
                where = "built on the CPU, cast, then moved"
            print(f"[build] {cls}: {params / 1e9:.1f} B params, {params * 4 / 1e9:.1f} GB in float32 > 90% of the "
                  f"GPU's free {free / 1e9:.1f} GB: {where}", flush=True)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(build_dtype)
    try:
        with torch.device(build_on):
            model = model_cls(**spec.config).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default_dtype)
    keep_fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if keep_fp32.intersection(name.split(".")) else dtype)
    for buffer in model.buffers():  # as a float32 build leaves them (RoPE tables ...)
        if buffer.is_floating_point():
            buffer.data = buffer.data.float()
    return model.to(device)


QUANT_CONFIGS = ("float8", "float8-weight")


def quantize_linears(model, quant: str | None):
    """Quantise ``model``'s linear layers with torchao as diffusers' ``TorchAoConfig`` does (every
    ``nn.Linear`` outside the model's ``_keep_in_fp32_modules``), in place; ``quant``:

    - ``"float8"``: float8 e4m3 weights and dynamically quantised activations with per-row scales
      (``Float8DynamicActivationFloat8WeightConfig(PerRow())``, float8 GEMMs; needs CUDA SM 8.9+);
    - ``"float8-weight"``: float8 weights only (``Float8WeightOnlyConfig``; runs on the CPU too);
    - ``None``: nothing.

    Returns the number of linear layers quantised. Raises with the install command when torchao is
    missing."""
    if quant is None:
        return 0
    if quant not in QUANT_CONFIGS:
        raise ValueError(f"--quant {quant!r}: use one of {', '.join(QUANT_CONFIGS)}")
    try:
        from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig,
                                          PerRow, quantize_)
    except ImportError as exc:
        raise SystemExit(f"--quant {quant} needs torchao: pip install 'torchao>=0.18,<0.19' ({exc})") from None
    config = (Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) if quant == "float8"
              else Float8WeightOnlyConfig())
    keep_fp32 = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    chosen = []

    def wanted(module, name: str) -> bool:
        take = isinstance(module, torch.nn.Linear) and not keep_fp32.intersection(name.split("."))
        if take:
            chosen.append(name)
        return take

    quantize_(model, config, filter_fn=wanted)
    return len(chosen)


def model_inputs(spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                 generator: torch.Generator | None = None) -> dict:
    """Random latent and text of ``spec``'s shapes; ``generator`` (default: seed 0 on ``device``)
    is left where it stopped, for a caller that draws more inputs."""
    gen = torch.Generator(device=device).manual_seed(0) if generator is None else generator
    return dict(
        hidden_states=torch.randn(spec.latent, generator=gen, device=device, dtype=dtype),
        timestep=torch.full((spec.latent[0],), 500.0, device=device),
        encoder_hidden_states=torch.randn(spec.text, generator=gen, device=device, dtype=dtype),
        return_dict=False,
    )


def timed_forward(model, kwargs: dict, device: torch.device, step: int | None = None) -> tuple[float, int | None]:
    """(ms, peak extra bytes on CUDA) of one forward; ``step``: inside cache_context("cond", step_index=step)."""
    common.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    if step is None:
        model(**kwargs)
    else:
        with model.cache_context("cond", step_index=step, num_inference_steps=len(STEP_KINDS)):
            model(**kwargs)
    common.sync(device)
    ms = (time.perf_counter() - t0) * 1e3
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return ms, peak


def time_steps(spec: ModelSpec, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Per-step times of every kind (median over args.reps), peak memory, state bytes, density."""
    from adaspa import AdaSpaAttention
    from pipelines import apply_sparse_attention

    t0 = time.perf_counter()
    model = build_model(spec, device, dtype)
    kwargs = model_inputs(spec, device, dtype)
    print(f"[{spec.key}] built in {time.perf_counter() - t0:.0f} s", flush=True)
    times: dict[str, list[float]] = {"dense (stock)": []}
    peaks: dict[str, int | None] = {}
    with torch.no_grad():
        for rep in range(args.warmup + args.reps):
            ms, peaks["dense (stock)"] = timed_forward(model, kwargs, device)
            if rep >= args.warmup:
                times["dense (stock)"].append(ms)
        print(f"[{spec.key}] dense (stock): {statistics.median(times['dense (stock)']):.1f} ms", flush=True)
        cfg = AdaSpaAttention(sparsity=args.sparsity, block_size=args.block, warmup_steps=1, search_steps=(1, 2),
                           schedule_steps=None)
        state_bytes, density = None, None
        with apply_sparse_attention(model, cfg) as handle:
            for rep in range(args.warmup + args.reps):  # each rep is a new generation (step index back to 0)
                for step, kind in enumerate(STEP_KINDS):
                    ms, peak = timed_forward(model, kwargs, device, step)
                    peaks[kind] = peak
                    if rep >= args.warmup:
                        times.setdefault(kind, []).append(ms)
                    state = handle.trackers[0].current.state
                    if kind == "first search":
                        state_bytes = state.nbytes()
                    if step == len(STEP_KINDS) - 1:
                        density = statistics.mean(
                            float(state.selected_blocks(layer).float().mean()) for layer in state.selections
                        )
                print(f"[{spec.key}] rep {rep}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in times.items() if v), flush=True)
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"ms": {k: statistics.median(v) for k, v in times.items()}, "peak": peaks,
            "state_bytes": state_bytes, "density": density}


def generation_totals(ms: dict, steps: int = DEFAULT_STEPS) -> dict:
    """The default schedule's generation time, computed from per-step times (see the docstring)."""
    from adaspa import AdaSpaAttention

    schedule = AdaSpaAttention().schedule(steps)
    warm = schedule.warmup_steps
    searches = len(schedule.search_steps)
    sparse = steps - warm - searches
    dense = CFG_FORWARDS * steps * ms["dense (stock)"]
    adaspa = CFG_FORWARDS * (warm * ms["dense (ours)"] + ms["first search"] + (searches - 1) * ms["cached search"]
                             + sparse * ms["sparse"])
    overhead = CFG_FORWARDS * ((ms["first search"] - ms["dense (stock)"])
                               + (searches - 1) * (ms["cached search"] - ms["sparse"]))
    return {
        "steps": f"{steps} ({warm} dense, {searches} search, {sparse} sparse) x {CFG_FORWARDS} forwards",
        "dense generation s": dense / 1e3,
        "AdaSpa generation s": adaspa / 1e3,
        "speedup": dense / adaspa,
        "search overhead s": overhead / 1e3,
        "overhead share of dense": overhead / dense,
        "target": f"<= {OVERHEAD_TARGET:.0%}",
        "met": overhead / dense <= OVERHEAD_TARGET,
    }


# --------------------------------------------------------------------------- one layer's attention
def attention_only(spec: ModelSpec, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """One layer's attention call at the model's shape, each kind and its parts."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    from adaspa import AdaSpaAttention, AdaSpaState, adaspa_attention
    from adaspa.search import BlockGeometry, select_blocks
    from kernels.attention import attention_with_lse, block_attention_mass, block_sparse_attention

    shape = common.Shape(spec.key, spec.name, 1, spec.heads, spec.tokens, spec.head_dim)
    q, k, v = common.random_qkv(shape, device, dtype=dtype)
    bshd = tuple(t.transpose(1, 2) for t in (q, k, v))  # diffusers' [B, S, H, D]
    cfg = AdaSpaAttention(sparsity=args.sparsity, block_size=args.block, warmup_steps=1, search_steps=(1, 2, 3),
                       schedule_steps=None)
    state = AdaSpaState()
    adaspa_attention(q, k, v, state, step=1, config=cfg)  # a selection and a cached LSE to reuse
    geometry = BlockGeometry.of(spec.tokens, args.block)
    lse = state.cached_lse(0)
    mass = block_attention_mass(q, k, lse, args.block)
    layout = state.layout(0)
    kinds = {
        "dense: diffusers default (dispatch_attention_fn)": lambda: dispatch_attention_fn(*bshd),
        "first search: adaspa_attention": lambda: adaspa_attention(q, k, v, AdaSpaState(), step=1, config=cfg),
        "cached search: adaspa_attention": lambda: adaspa_attention(q, k, v, state, step=2, config=cfg),
        "sparse: adaspa_attention": lambda: adaspa_attention(q, k, v, state, step=4, config=cfg),
        "part: attention_with_lse": lambda: attention_with_lse(q, k, v),
        "part: block_attention_mass (cached LSE)": lambda: block_attention_mass(q, k, lse, args.block),
        "part: select_blocks (top-k, tiers, recall)": lambda: select_blocks(
            mass, geometry, sparsity=cfg.sparsity, recall_threshold=cfg.recall_threshold, tiers=cfg.tiers),
        "part: layout from the bitmask": lambda: state.layout(0),
        "part: block_sparse_attention": lambda: block_sparse_attention(q, k, v, layout),
    }
    rows, dense_ms = [], None
    for label, fn in kinds.items():
        m = common.measure(lambda fn=fn: fn, device, label=label, rep=args.rep)
        dense_ms = m.ms if dense_ms is None else dense_ms
        rows.append({"model": spec.name, "call": label, "ms": m.ms,
                     "vs dense": m.ms / dense_ms if m.ok and dense_ms else None, "note": m.status()})
        print(f"[{spec.key}] {label}: {common.fmt(m.ms)} ms", flush=True)
    return rows


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["1.3b", "14b", "proxy", "both"], default="both",
                   help="both: the two Wan2.1 models; proxy: the proxy's architecture at its evaluation size")
    p.add_argument("--smoke", action="store_true", help="a tiny Wan, every code path (CPU interpreter without CUDA)")
    p.add_argument("--memory", action="store_true", help="cache memory only (CPU, no model)")
    p.add_argument("--sparsity", type=float, default=0.8)
    p.add_argument("--block", type=int, default=None,
                   help=f"block size (default {DEFAULT_BLOCK}; {SMOKE_CPU_BLOCK} in --smoke on the CPU)")
    p.add_argument("--reps", type=int, default=2, help="timed forwards of each kind")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards of each kind first (kernel compiles)")
    p.add_argument("--rep", type=float, default=100, help="do_bench rep (ms) of the attention-only rows")
    args = p.parse_args(argv)
    device = common.setup("cpu" if args.memory else None)
    memory_block = args.block or DEFAULT_BLOCK
    args.block = args.block or (SMOKE_CPU_BLOCK if args.smoke and device.type == "cpu" else DEFAULT_BLOCK)
    info = common.env_header(device, smoke=args.smoke, extra={"sparsity": args.sparsity, "block": args.block,
                                                              "reps": args.reps, "warmup": args.warmup})
    common.print_header(info, "AdaSpa: per-step times, 50-step totals, search overhead, cache memory")
    memory = memory_rows(args.sparsity, memory_block)
    formula = check_memory_formula(device)
    print(f"cache_bytes vs a real AdaSpaState: {formula}", flush=True)
    payload = {"env": info, "memory": memory, "memory_formula_check": formula}
    if not args.memory:
        dtype = torch.bfloat16
        specs = [SMOKE_MODEL] if args.smoke else [MODELS[key] for key in (("1.3b", "14b") if args.model == "both" else (args.model,))]
        steps, totals, attention = [], [], []
        for spec in specs:
            measured = time_steps(spec, args, device, dtype)
            dense = measured["ms"]["dense (stock)"]
            for kind, ms in measured["ms"].items():
                peak = measured["peak"].get(kind)
                steps.append({"model": spec.name, "step": kind, "ms": ms, "vs dense": ms / dense,
                              "peak extra MiB": None if peak is None else peak / MIB})
            totals.append({"model": spec.name, **generation_totals(measured["ms"]),
                           "state MiB per branch": measured["state_bytes"] / MIB,
                           "selected density": measured["density"]})
            attention += attention_only(spec, args, device, dtype)
        payload.update(steps=steps, totals=totals, attention=attention)
        common.write_json("bench_adaspa", payload)
        common.print_table(attention, [("model", "model"), ("call", "one layer's attention call"), ("ms", "ms"),
                                       ("vs dense", "vs dense"), ("note", "note")],
                           title=f"Attention only, one layer, s = {args.sparsity}, blocks {args.block} (do_bench median)")
        common.print_table(steps, [("model", "model"), ("step", "transformer forward"), ("ms", "ms"),
                                   ("vs dense", "vs stock dense"), ("peak extra MiB", "peak extra MiB")],
                           title=f"Per-step times (median of {args.reps}), s = {args.sparsity}")
        cols = list(totals[0])
        common.print_table(totals, [(c, c) for c in cols],
                           title="50-step generation, computed from the per-step times above (CFG: 2 forwards per step)")
    else:
        common.write_json("bench_adaspa", payload)
    common.print_table(memory, [(c, c) for c in memory[0]],
                       title=f"AdaSpa cache per CFG branch at s = {args.sparsity} (held: LSE + bitmask + per-head; "
                             "'alt' columns: storage not chosen)")
    return 0 if formula["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
