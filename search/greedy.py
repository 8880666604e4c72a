"""The greedy search of Sparse-vDiT (paper Eq. 2-3, Alg. 1) as an attention method.

``PlanSearch`` runs inside a normal generation (``apply_sparse_attention(pipe, PlanSearch(...))``,
then ``pipe(...)``). At the first call of every (step, layer) it computes, for all heads at once,
the dense output O_0 and each candidate mode's output O_i on the call's real q, k, v, and per head

    loss_i = ||O_i - O_0||^2 / ||O_0||^2  +  lambda * cost_i

(the MSE normalised by the dense output's energy, so epsilon means the same on every model; cost
measured on the GPU or the FLOP density, ``search.cost_model``). A head takes the candidate of
least loss if that loss is below epsilon, else stays Full. The call returns the chosen outputs,
so later layers and steps run on what the plan will compute: the search is greedy along the
trajectory, as in the paper. Other calls of the same step (the second CFG branch of Wan) reuse the
step's decisions.

Choices where the paper is open (tested in tests/test_search.py):
- Full is the fallback, not a candidate: its loss would be lambda * 1, so with the paper's
  lambda = 0.5 and epsilon = 1 the threshold would never bind. Here epsilon bounds the chosen
  candidate's loss: larger epsilon, more sparsity (the paper's ablation trend). Default epsilon
  0.05 (normalised units; the paper's epsilon = 1 is in its models' raw MSE units).
- The error is taken over the whole output of the head (all batch samples, rows and channels),
  text rows included.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from kernels.limits import Q_BLOCK_SIZES, head_dim_error, head_dim_supported
from search.candidates import DEFAULT_CANDIDATES, check_candidates
from search.cost_model import CostShape, candidate_costs
from search.defaults import DEFAULT_EPSILON, DEFAULT_LAMBDA  # re-exported: their old home
from sparse_vdit.modes import Full, Mode, ModeBank
from sparse_vdit.guards import check_kernel_dtype
from sparse_vdit.protocol import AttentionCall, AttentionMethod, ForwardContext, ModelInfo



def check_lambda_epsilon(lam: float, epsilon: float) -> None:
    """``ValueError`` unless lambda is a finite number >= 0 and epsilon a finite number > 0."""
    if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be a finite number >= 0 (the weight of the cost in the loss), got {lam!r}")
    if not (isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0 (the loss a head's mode must stay below), got {epsilon!r}")


class PlanSearch(AttentionMethod):
    """Greedy per-head mode search during one generation; ``step_modes()`` gives the decisions.

    Args:
        candidates: modes to try (default ``search.candidates.DEFAULT_CANDIDATES``).
        lam: weight of the cost in the loss (>= 0).
        epsilon: a head takes its best candidate only if its loss is below this (> 0).
        block_size: layout block size (one the kernel serves; 128 or 64 on GPUs).
        cost: "auto" (measured on CUDA, else FLOP density), "measured" or "flops".
        costs: precomputed {mode: cost} (e.g. from an earlier run of the same search), or None.
    """

    def __init__(self, candidates: Sequence[Mode] = DEFAULT_CANDIDATES, *, lam: float = DEFAULT_LAMBDA,
                 epsilon: float = DEFAULT_EPSILON, block_size: int = 128, cost: str = "auto",
                 costs: dict | None = None, cost_source: str | None = None, gpu: str | None = None) -> None:
        self.candidates = check_candidates(candidates)
        check_lambda_epsilon(lam, epsilon)
        if block_size not in Q_BLOCK_SIZES:
            raise ValueError(f"block_size {block_size} is not served by the kernel: use one of {Q_BLOCK_SIZES}")
        self.lam, self.epsilon, self.block_size, self.cost = float(lam), float(epsilon), int(block_size), cost
        self.costs, self.cost_source, self.gpu = costs, cost_source, gpu
        self.cost_shape: CostShape | None = None
        self.model: ModelInfo | None = None
        self.token_layout = None
        self.num_steps: int | None = None
        self.decisions: dict[int, dict[int, tuple[Mode, ...]]] = {}  # step -> layer -> mode per head
        self.losses: dict[int, dict[int, list[float]]] = {}  # step -> layer -> chosen loss per head
        self._banks: dict = {}

    def __repr__(self) -> str:
        return (f"PlanSearch({len(self.candidates)} candidates, lam={self.lam}, epsilon={self.epsilon}, "
                f"block_size={self.block_size})")

    # ------------------------------------------------------------------ protocol
    def validate(self, model: ModelInfo) -> None:
        if not head_dim_supported(model.head_dim):
            raise ValueError(f"{model.family}: " + head_dim_error(model.head_dim))
        self.model = model

    def begin_forward(self, forward: ForwardContext) -> ModeBank:
        check_kernel_dtype(forward.dtype, "the plan search (its candidates' block-sparse kernel)")
        if self.token_layout is None:
            self.token_layout = forward.token_layout
        elif forward.token_layout != self.token_layout:
            raise ValueError(
                f"one search must run at one token layout: started at {self.token_layout.describe()}, "
                f"now {forward.token_layout.describe()}"
            )
        if forward.num_steps is not None:
            self.num_steps = forward.num_steps
        if self.costs is None:
            self.cost_shape = CostShape(forward.token_layout, forward.model.num_heads, forward.model.head_dim,
                                        forward.batch_size, self.block_size, forward.dtype)
            self.costs, self.cost_source, self.gpu = candidate_costs(
                self.candidates, self.cost_shape, forward.device, self.cost)
        key = (forward.token_layout, str(forward.device))
        if key not in self._banks:
            self._banks[key] = ModeBank((*self.candidates, Full()), forward.token_layout,
                                        block_size=self.block_size, device=forward.device)
        return self._banks[key]

    def __call__(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        bank: ModeBank = call.prepared
        step, layer = call.step_index, call.layer_index
        decided = self.decisions.get(step, {}).get(layer)
        if decided is not None:  # another call of this step (the second CFG branch): same modes
            return None if all(isinstance(m, Full) for m in decided) else bank.layout(decided)
        modes, losses, out = self.choose(call, q, k, v, bank)
        self.decisions.setdefault(step, {})[layer] = modes
        self.losses.setdefault(step, {})[layer] = losses
        return out

    # ------------------------------------------------------------------ the decision
    def choose(self, call: AttentionCall, q, k, v, bank: ModeBank):
        """(mode per head, its loss per head, the output [B, H, S, D] with those modes)."""
        dense, _ = call.attention_with_lse(q, k, v)
        ref = dense.float()
        energy = ref.pow(2).sum(dim=(0, 2, 3)).clamp_min(torch.finfo(torch.float32).tiny)  # [H]
        heads = q.shape[1]
        best_loss = torch.full((heads,), math.inf, device=q.device)
        best_idx = torch.full((heads,), -1, dtype=torch.long, device=q.device)
        best_out = dense
        for i, mode in enumerate(self.candidates):
            out = call.block_sparse_attention(q, k, v, bank.layout([mode]))
            loss = (out.float() - ref).pow(2).sum(dim=(0, 2, 3)) / energy + self.lam * self.costs[mode]
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_idx = torch.where(better, i, best_idx)
            best_out = torch.where(better.view(1, -1, 1, 1), out, best_out)
        use = best_loss < self.epsilon
        out = torch.where(use.view(1, -1, 1, 1), best_out, dense)
        # The search runs eagerly, once per (step, layer): reading the decisions back here is fine.
        idx, use_host, loss_host = best_idx.tolist(), use.tolist(), best_loss.tolist()
        modes = tuple(self.candidates[i] if u else Full() for i, u in zip(idx, use_host))
        losses = [loss if u else 0.0 for loss, u in zip(loss_host, use_host)]
        return modes, losses, out

    # ------------------------------------------------------------------ results
    def step_modes(self) -> list[list[tuple[Mode, ...]]]:
        """[step][layer] -> mode per head, for every step of the generation searched."""
        if not self.decisions or self.model is None:
            raise RuntimeError("the search has not run: apply it to a pipeline and generate first")
        steps = self.num_steps or (max(self.decisions) + 1)
        missing = [s for s in range(steps) if s not in self.decisions]
        if missing:
            raise RuntimeError(f"the search saw no attention call at steps {missing[:8]} of {steps}")
        out = []
        for s in range(steps):
            layers = self.decisions[s]
            absent = [i for i in range(self.model.num_layers) if i not in layers]
            if absent:
                raise RuntimeError(f"the search saw no call of layers {absent[:8]} at step {s}")
            out.append([layers[i] for i in range(self.model.num_layers)])
        return out
