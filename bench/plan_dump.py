"""Dump the plan of each `basisrt.zoo` model (r10, every conv but the first, dense_backend="basisrt")
as JSON, to compare the plans two versions of basisrt make (no timing):

    PYTHONPATH=<checkout A> python bench/plan_dump.py a.json
    PYTHONPATH=<checkout B> python bench/plan_dump.py b.json
    python -c "import json; a, b = (json.load(open(f)) for f in ('a.json', 'b.json'));
               print({k: a[k] == b[k] for k in a})"
"""
import json
import sys

import torch

import basisrt
from basisrt import zoo

out = {}
for name in zoo.MODELS:
    torch.manual_seed(0)
    m = basisrt.models.create(name).eval()
    shape = basisrt.models.input_shape(name)
    stem = next(n for n, layer in m.named_modules() if isinstance(layer, torch.nn.Conv2d))
    pm = basisrt.decompose(m, exclude=(stem,)).model.eval()
    basisrt.prune_basis(pm, "ratio", 0.1)
    x = torch.randn(1, *shape)
    c = basisrt.compile(pm, x, dense_backend="basisrt")
    out[name] = dict(native=c.native is not None, steps=[(s.strategy, s.detail) for s in c.plan.steps])
json.dump(out, open(sys.argv[1], "w"))
