"""Several searches (prompts x seeds) combined into one plan, and how consistent they were.

The paper claims the modes depend on layer and head, not on the prompt. Here that is measured:
for every (step, layer, head) the runs vote; the plan takes the majority mode (a tie goes to the
costliest of the tied modes, i.e. the one that computes most: the safe side), and the report says

    consistency     mean over (step, layer, head) of the share of runs that chose the plan's mode
    kind_agreement  the same, comparing only the mode kind (diagonal vs multi-diagonal ...), not
                    its parameters
    unanimous       share of (step, layer, head) where every run chose the same mode
    cell_agreement  per (step, layer, head), the share of runs that chose the plan's mode
                    ([steps][layers][heads], what ``adaspa.hybrid`` reads)

and, given each run's (prompt, seed), the mean share of (step, layer, head) on which two runs chose
the same mode, over pairs of runs of the same prompt (other seeds: ``agreement_same_prompt``) and
over pairs of different prompts (``agreement_other_prompt``). If the modes depend on layer and head
only, the two are alike; if the prompt matters, the second is lower.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from sparse_vdit.modes import Full, Mode

StepModes = Sequence[Sequence[Sequence[Mode]]]  # [step][layer][head]


def combine_runs(runs: Sequence[StepModes], costs: dict[Mode, float],
                 keys: Sequence[tuple] | None = None) -> tuple[list, dict]:
    """(majority step modes [step][layer][head], consistency report) of several runs' decisions.

    keys: (prompt, seed) of each run, for the agreement within and across prompts."""
    if not runs:
        raise ValueError("no search runs to combine")
    shape = (len(runs[0]), len(runs[0][0]), len(runs[0][0][0]))
    for r in runs:
        if (len(r), len(r[0]), len(r[0][0])) != shape:
            raise ValueError("search runs of different step, layer or head counts cannot be combined")
    n = len(runs)
    plan, agree, kind_agree, unanimous, cells = [], 0.0, 0.0, 0, 0
    cell_agreement = []
    for s in range(shape[0]):
        layers, layer_agreement = [], []
        for layer in range(shape[1]):
            heads, head_agreement = [], []
            for h in range(shape[2]):
                votes = Counter(r[s][layer][h] for r in runs)
                top = max(votes.values())
                tied = [m for m, c in votes.items() if c == top]
                choice = max(tied, key=lambda m: (costs.get(m, 1.0 if isinstance(m, Full) else 0.0), repr(m)))
                heads.append(choice)
                head_agreement.append(round(top / n, 4))
                kinds = Counter(type(r[s][layer][h]) for r in runs)
                agree += top / n
                kind_agree += kinds[type(choice)] / n
                unanimous += top == n
                cells += 1
            layers.append(tuple(heads))
            layer_agreement.append(head_agreement)
        plan.append(layers)
        cell_agreement.append(layer_agreement)
    report = {
        "runs": n,
        "consistency": agree / cells,
        "kind_agreement": kind_agree / cells,
        "unanimous": unanimous / cells,
        "method": "majority per (step, layer, head); ties to the costliest mode",
        "cell_agreement": cell_agreement,
    }
    if keys is not None:
        if len(keys) != n:
            raise ValueError(f"{len(keys)} run keys for {n} runs")
        report.update(_pairwise_agreement(runs, keys))
    return plan, report


def _pairwise_agreement(runs: Sequence[StepModes], keys: Sequence[tuple]) -> dict:
    """Mean share of cells two runs agree on, over same-prompt pairs and over other-prompt pairs."""
    flat = [[m for layers in r for heads in layers for m in heads] for r in runs]
    same, other = [], []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            share = sum(a == b for a, b in zip(flat[i], flat[j])) / len(flat[i])
            (same if keys[i][0] == keys[j][0] else other).append(share)
    out = {}
    for name, values in (("agreement_same_prompt", same), ("agreement_other_prompt", other)):
        if values:
            out[name] = sum(values) / len(values)
    return out
