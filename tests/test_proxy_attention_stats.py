"""Attention statistics: shares sum to 1, heads with a known structure are classified as such,
and recording leaves the generation unchanged."""

import torch

from pipelines.proxy import SMOKE_CONFIG, build_proxy_pipeline
from pipelines.proxy.attention_stats import (
    HEAD_CLASSES,
    PATTERNS,
    TARGET_DENSITY,
    TARGET_MASS,
    AttentionStats,
    _masks,
    attention_statistics,
    head_mass,
    main,
    query_rows,
)
from sparse_vdit.modes import Diagonal, MultiDiagonal, VerticalStripe
from sparse_vdit.token_layout import TokenLayout

SMALL = dict(height=SMOKE_CONFIG.height, width=SMOKE_CONFIG.width, num_frames=SMOKE_CONFIG.frames, max_sequence_length=16)


def test_on_a_random_weight_proxy():
    pipe = build_proxy_pipeline(SMOKE_CONFIG)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle moves right", "camera pans up over grass"]
    stats = attention_statistics(pipe, prompts, num_inference_steps=3, steps=[0, 2], **SMALL)
    layers, heads = SMOKE_CONFIG.num_layers, SMOKE_CONFIG.num_heads
    assert stats.mass_shares.shape == (layers, heads, 4)
    torch.testing.assert_close(stats.mass_shares.sum(-1), torch.ones(layers, heads))
    assert (stats.mass_shares >= -1e-6).all()
    assert stats.calls == len(prompts) * 2 * 2  # prompts x recorded steps x CFG branches
    assert all(c in HEAD_CLASSES for layer in stats.classes for c in layer)
    assert abs(sum(stats.head_shares().values()) - 1) < 1e-9
    assert ((stats.entropy > 0) & (stats.entropy <= 1 + 1e-6)).all()
    assert stats.layer_names == ("blocks.0.attn1", "blocks.1.attn1")
    table = stats.table()
    assert "blocks.1.attn1" in table and "heads:" in table
    assert set(stats.to_dict()["head_shares"]) == set(HEAD_CLASSES)

    # The recorder returns None: the generation is the stock one.
    kwargs = dict(SMALL, num_inference_steps=3, output_type="latent")
    stock = pipe(prompts[0], generator=torch.Generator().manual_seed(0), **kwargs).frames
    from pipelines.apply import apply_sparse_attention
    from pipelines.proxy.attention_stats import AttentionRecorder

    with apply_sparse_attention(pipe, AttentionRecorder()):
        recorded = pipe(prompts[0], generator=torch.Generator().manual_seed(0), **kwargs).frames
    torch.testing.assert_close(recorded, stock)


def _classify(layout, q, k):
    masks = _masks(layout, query_rows(layout.seq_len, 1), "cpu")
    mass, entropy = head_mass(q, k, masks)
    return AttentionStats.from_pattern_mass(mass[0][None], entropy[0][None], masks.density,
                                            candidate_density=masks.candidate_density)


def test_known_structures_are_classified():
    """Four heads built to attend (0) themselves, (1) their position in every frame, (2) frame 0,
    (3) uniformly: diagonal, temporal, stripe, diffuse; the first three meet the structure target
    with the sparsest mode that holds 0.6 of their mass (for the temporal head +-2 of 5 frames),
    the fourth does not."""
    layout = TokenLayout(5, 16, 16)
    s, d = layout.seq_len, 64
    g = torch.Generator().manual_seed(0)
    token = torch.nn.functional.normalize(torch.randn(s, d, generator=g), dim=-1) * 12
    position = torch.nn.functional.normalize(torch.randn(layout.frame_len, d, generator=g), dim=-1) * 12
    spatial = position.repeat(layout.frames, 1)
    anchor = torch.zeros(s, d)
    anchor[:, 0] = 1.0
    frame0 = torch.zeros(s, d)
    frame0[: layout.frame_len, 0] = 40.0
    q = torch.stack([token, spatial, anchor, torch.zeros(s, d)])[None]
    k = torch.stack([token, spatial, frame0, torch.zeros(s, d)])[None]
    stats = _classify(layout, q, k)
    assert stats.classes == (("diagonal", "temporal", "stripe", "diffuse"),)
    shares = stats.mass_shares[0]
    torch.testing.assert_close(shares.sum(-1), torch.ones(4))
    assert shares[0, 0] > 0.9 and shares[1, 1] > 0.5 and shares[2, 2] > 0.5
    assert stats.entropy[0, 3] > 0.999 and stats.entropy[0, 0] < 0.3
    (targets,) = stats.target
    assert [t and (t[0], t[1]) for t in targets] == [
        ("diagonal", Diagonal(1)), ("temporal", MultiDiagonal(1, 2)), ("stripe", VerticalStripe((0,), 1)), None]
    assert all(t[2] >= TARGET_MASS and t[3] <= TARGET_DENSITY for t in targets[:3])
    summary = stats.target_summary()
    assert summary["met"] == 3 and summary["by_kind"] == {"diagonal": 1, "temporal": 1, "stripe": 1} and summary["goal_met"]
    assert "structure target: 3 of 4 heads" in stats.table()
    assert stats.to_dict()["target"][0][3] is None and stats.to_dict()["target"][0][0]["mode"] == "diagonal"


def test_query_rows_and_densities():
    rows = query_rows(3456, 4)
    assert len(rows) == 864 and rows.max() < 3456 and len(set((rows % 24).tolist())) > 1  # not one column
    assert torch.equal(query_rows(100, 1), torch.arange(100))
    assert len(query_rows(3456, None, "cuda")) == 3456 and len(query_rows(3456, None, "cpu")) <= 1024
    density = _masks(TokenLayout(9, 16, 24), query_rows(3456, 4), "cpu").density
    assert list(density) == list(PATTERNS)
    assert density["diagonal"] < density["stripe"] < density["temporal"] < 0.2


def test_command_without_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "absent.safetensors")]) == 2
    assert "python -m pipelines.proxy.train" in capsys.readouterr().err
