"""Test-session set-up shared by every test module."""

import os

import torch

# Without a GPU the Triton kernels run on the CPU through Triton's interpreter. Triton decides between compiling
# and interpreting when a kernel is defined, so this must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
