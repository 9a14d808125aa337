"""Session-wide test setup.

Without a GPU, Triton kernels run under the interpreter, and TRITON_INTERPRET=1 must be set
before anything imports triton: torch imports it lazily (FlopCounterMode, inductor), and
triton's own @jit helpers decorated then (e.g. triton.language.standard) cannot be called from
an interpreted kernel later.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
