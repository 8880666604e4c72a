"""Test session set-up: without a GPU, Triton kernels run on the CPU interpreter.

TRITON_INTERPRET must be set before triton is first imported, which happens when a test module
imports ``kernels.attention``; conftest runs before that.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
