"""The copy-engine (TMA descriptor) path of the block-sparse kernel, forced on under the CPU
interpreter, computes the same function as the pointer path and the float64 reference.

On the GPU the launcher picks it by itself on sm_90+; here it would never run otherwise."""

import pytest
import torch
import triton

import kernels.attention as attention
from kernels.block_layout import BlockLayout
from kernels.reference import attention_ref


@pytest.fixture
def force_tma(monkeypatch):
    monkeypatch.setattr(attention, "_tma_ok", lambda *tensors: True)
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))


@pytest.mark.parametrize("seq,head_dim,dtype", [(113, 64, torch.float16), (300, 128, torch.bfloat16)])
def test_tma_path_matches_reference(force_tma, seq, head_dim, dtype):
    g = torch.Generator().manual_seed(seq)
    q, k, v = (torch.randn(1, seq, 2, head_dim, generator=g).to(dtype).transpose(1, 2) for _ in range(3))
    window = BlockLayout.from_mask_mod(
        lambda b, h, qi, ki: (qi - ki).abs() < 40 + 30 * h, None, 2, seq, seq, block_size=64
    )
    for got, mask in (
        (attention.block_sparse_attention(q, k, v, window), window.to_dense()),
        (attention.attention_with_lse(q, k, v)[0], None),
    ):
        ref, _ = attention_ref(q, k, v, mask)
        low, _ = attention_ref(q, k, v, mask, upcast=False)
        err, torch_err = (got.double() - ref).abs().max().item(), (low.double() - ref).abs().max().item()
        assert err <= 2 * torch_err, (err, torch_err)
