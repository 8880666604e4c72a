"""Test session set-up: without a GPU, Triton kernels run on the CPU interpreter.

TRITON_INTERPRET must be set before triton is first imported, which happens when a test module
imports ``kernels.attention``; conftest runs before that.
"""

import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def fallback(monkeypatch):
    """The PyTorch fallback path: TRITON_INTERPRET unset for the call, the once-only warning
    re-armed, and any Triton launch turned into an error (so a test cannot pass by running the
    interpreter instead)."""
    import kernels.attention as attention_mod
    from kernels import torch_paths

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(attention_mod, "interpreting", lambda: False)
    monkeypatch.setattr(torch_paths, "_warned", set())

    def no_triton(*args, **kwargs):
        raise AssertionError("the Triton kernel was launched; the PyTorch fallback was expected")

    monkeypatch.setattr(attention_mod, "_launch_attention", no_triton)
    monkeypatch.setattr(attention_mod, "_launch_mass", no_triton)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # counted explicitly where it matters
        yield monkeypatch
