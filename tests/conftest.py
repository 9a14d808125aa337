"""Session-wide test setup.

Without a GPU, Triton kernels run under the interpreter, and TRITON_INTERPRET=1 must be set
before anything imports triton: torch imports it lazily (FlopCounterMode, inductor), and
triton's own @jit helpers decorated then (e.g. triton.language.standard) cannot be called from
an interpreted kernel later.

BASISRT_POISON_ARENA=1 makes every native program fill its intermediate buffers with NaN before
each call (csrc/program.cpp), so a read of memory that no op of that call wrote fails the tests
instead of reusing a dead buffer's values. It must be set before basisrt._C reads it once.

On a GPU, BASISRT_TRITON_AUTOTUNE=0 gives every unpinned Triton launch one fixed config: tuning
compiles every config for every new layer kind, minutes over the suite. The tests that pin each
tuning config, and the one that tunes, set their own.
"""
import os

import torch

os.environ.setdefault("BASISRT_POISON_ARENA", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    os.environ.setdefault("BASISRT_TRITON_AUTOTUNE", "0")
