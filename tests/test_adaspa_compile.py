"""torch.compile(transformer, fullgraph=True) runs AdaSpa in every phase (dense, first search,
sparse, LSE-cached search) without a graph break: one graph for all of them (the attention step is
one opaque op, ``pipelines.processors``), reused across steps, CFG branches and generations, with
the eager outputs.

The ops run their PyTorch path inside the graphs (the ``fallback`` fixture): what is tested is the
tracing (custom ops, state writes, in-place text rows), which does not depend on the op's
implementation; the Triton kernels' outputs are tested in test_adaspa_pipelines.py."""

from __future__ import annotations

import torch
import torch._dynamo
import torch._dynamo.testing

from adaspa.schedule import PHASES
from pipelines import apply_sparse_attention, tiny
from test_adaspa_pipelines import CASES, STEPS, config, run_steps


def _compiled_matches_eager(model, branches: dict, generations: int = 2):
    """Eager outputs first, then the compiled model (aot_eager backend, fullgraph: a graph break
    raises) over ``generations`` generations; returns the number of graphs compiled after each."""
    with apply_sparse_attention(model, config(0.5)) as handle:
        eager = run_steps(model, handle, branches)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    graphs = []
    with apply_sparse_attention(model, config(0.5)) as handle:
        for _ in range(generations):
            got = run_steps(model, handle, branches, forward=compiled)
            for name in branches:
                for step, (out, want) in enumerate(zip(got[name][0], eager[name][0])):
                    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name} step {step}: {m}")
            graphs.append(counter.frame_count)
    return graphs


@torch.no_grad()
def test_compiled_wan_one_graph_per_phase_across_steps_branches_generations(fallback):
    model = tiny.tiny_wan_transformer()
    cond = tiny.wan_inputs(frames=2, height=8, width=16)
    uncond = dict(cond, encoder_hidden_states=torch.randn_like(cond["encoder_hidden_states"]))
    graphs = _compiled_matches_eager(model, {"cond": cond, "uncond": uncond})
    assert graphs == [1, 1], f"{STEPS} steps ({len(PHASES)} phases) x 2 branches x 2 generations compiled {graphs} graphs"


@torch.no_grad()
def test_compiled_hunyuan_padded_prompts_every_phase(fallback):
    """Key padding, dense text rows written into the sparse output, per-sample selections."""
    make, inputs = CASES["hunyuan-padded-prompts"]
    model = make()
    graphs = _compiled_matches_eager(model, {"cond": inputs(model)}, generations=1)
    assert graphs == [1]
