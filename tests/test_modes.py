"""Sparse-vDiT modes: block maps are exactly the blocks their element pattern touches, and a
fused multi-mode layer matches the float64 reference head by head."""

import pytest
import torch

from kernels.attention import block_sparse_attention
from kernels.block_layout import BlockLayout
from kernels.reference import attention_ref
from sparse_vdit.modes import (
    Diagonal,
    Full,
    MultiDiagonal,
    Skip,
    VerticalStripe,
    head_layout,
    mode_block_map,
    mode_density,
    mode_mask_mod,
)
from sparse_vdit.token_layout import TokenLayout

LAYOUTS = [
    TokenLayout(5, 6, 7),
    TokenLayout(4, 5, 9, text_len=7, text_position="before"),
    TokenLayout(3, 4, 30, text_len=13, text_position="after"),
]
MODES = [
    Full(), Skip(), Diagonal(0), Diagonal(1), MultiDiagonal(1), MultiDiagonal(0, frames=1),
    VerticalStripe((0,)), VerticalStripe((-1, 1), row_stride=2),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: t.describe())
@pytest.mark.parametrize("block_size", [16, 32, (32, 16)])
def test_block_map_is_exact_cover_of_element_pattern(layout, block_size):
    for mode in MODES:
        blocks = mode_block_map(mode, layout, block_size)
        from_elements = BlockLayout.from_mask_mod(
            mode_mask_mod(mode, layout), None, None, layout.seq_len, layout.seq_len, block_size=block_size
        )
        full, partial = from_elements.block_maps()
        assert torch.equal(blocks, (full | partial)[0, 0]), mode


def test_element_patterns_follow_the_spec():
    layout = TokenLayout(3, 4, 5, text_len=2, text_position="before")
    q = torch.arange(layout.seq_len).view(-1, 1)
    k = torch.arange(layout.seq_len).view(1, -1)
    diag = mode_mask_mod(Diagonal(1), layout)(0, 0, q, k)
    # frame 1, row 2, col 3 attends frame 1 rows 1..3 and the text, nothing in frames 0 / 2.
    i = layout.token_index(1, 2, 3)
    assert diag[i, layout.token_index(1, 1, 0)] and diag[i, layout.token_index(1, 3, 4)]
    assert not diag[i, layout.token_index(1, 0, 3)] and not diag[i, layout.token_index(0, 2, 3)]
    assert diag[i, :2].all() and diag[:2].all()  # text columns and rows dense
    multi = mode_mask_mod(MultiDiagonal(0), layout)(0, 0, q, k)
    assert multi[i, layout.token_index(0, 2, 0)] and multi[i, layout.token_index(2, 2, 4)]
    assert not multi[i, layout.token_index(2, 1, 4)]
    stripe = mode_mask_mod(VerticalStripe((-1,), row_stride=2), layout)(0, 0, q, k)
    assert stripe[i, layout.token_index(2, 0, 1)] and stripe[i, layout.token_index(2, 2, 1)]
    assert not stripe[i, layout.token_index(2, 1, 1)] and not stripe[i, layout.token_index(1, 2, 3)]
    assert not mode_mask_mod(Skip(), layout)(0, 0, q, k).any()


def test_density_orders_and_extremes():
    layout = TokenLayout(21, 30, 52)
    assert mode_density(Full(), layout) == pytest.approx(1.0)
    assert mode_density(Skip(), layout) == 0.0
    d1, d4 = mode_density(Diagonal(1), layout), mode_density(Diagonal(4), layout)
    assert 0 < d1 < d4 < 0.1
    assert mode_density(MultiDiagonal(1, frames=2), layout) < mode_density(MultiDiagonal(1), layout)


def test_bad_modes_are_rejected():
    with pytest.raises(ValueError):
        Diagonal(-1)
    with pytest.raises(ValueError):
        VerticalStripe(())
    with pytest.raises(ValueError, match="outside"):
        mode_block_map(VerticalStripe((9,)), TokenLayout(3, 4, 5))


@pytest.mark.parametrize("dtype,head_dim", [(torch.float16, 64), (torch.bfloat16, 128)])
def test_fused_layer_of_mixed_modes_matches_reference(dtype, head_dim):
    layout = TokenLayout(3, 4, 12, text_len=7, text_position="after")  # 151 tokens: not a block multiple
    modes = [Full(), Skip(), Diagonal(1), MultiDiagonal(0), VerticalStripe((0,))]
    blocks = head_layout(modes, layout, block_size=32)
    assert blocks.shape[:2] == (1, len(modes))
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, layout.seq_len, len(modes), head_dim, generator=g).to(dtype).transpose(1, 2) for _ in range(3))
    out, lse = block_sparse_attention(q, k, v, blocks, return_lse=True)
    mask = blocks.to_dense()
    ref, ref_lse = attention_ref(q, k, v, mask)
    low, _ = attention_ref(q, k, v, mask, upcast=False)
    err = (out.double() - ref).abs().max().item()
    torch_err = (low.double() - ref).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, (err, torch_err)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))  # Skip head: exact zeros
    assert torch.isneginf(lse[:, 1]).all()
    finite = torch.isfinite(ref_lse)
    assert (lse.double()[finite] - ref_lse[finite]).abs().max() < 1e-3
