"""How often compile's timed Winograd-or-direct choice (bf16) comes out the wrong way round.

Compiles a #19 bench model as `basisrt bench` builds basisrt_bf16, then times its bf16 Winograd
convs against the direct bf16 conv `--trials` times each way compile can (`autotune.step_seconds`):
in a plan with every conv direct (the first timing `compile` makes) and in the plan with only
those convs direct (the confirmation, `entry._confirmed`). Prints direct ÷ Winograd per trial.

    python bench/timed_choice_noise.py --model resnet18 --level r25 --batch 1 --only layers_3
"""
import argparse
import copy

import torch
from torch import nn

import basisrt
from basisrt import models as model_zoo
from basisrt.bench.runner import make_pruned
from basisrt.compiler.autotune import step_seconds
from basisrt.compiler.compiled import CompiledModel
from basisrt.compiler.cpu_steps import FusedConv2d
from basisrt.decomposition import decompose


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--level", default="r25")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--only", default="", help="steps whose names start with this")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dense = model_zoo.create(a.model).eval()
    first = next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d))
    pm, _ = make_pruned(dense, decompose(dense, exclude=[first]).model.eval(), a.level, model_zoo.input_shape(a.model))
    x = torch.randn(a.batch, *model_zoo.input_shape(a.model))
    cm = basisrt.compile(pm, x, autotune=False, precision="bf16")
    names = sorted(n for n, m in cm.module.named_modules()
                   if getattr(m, "_bf16", None) is not None and m._bf16.winograd is not None and n.startswith(a.only))
    args = (cm.input_shape, torch.float32, torch.device("cpu"), False)

    def direct(steps: set[str] | None) -> CompiledModel:
        gm = copy.deepcopy(cm.module)
        for n, m in gm.named_modules():
            if isinstance(m, FusedConv2d) and (steps is None or n in steps):
                m.bf16_direct = True
        return CompiledModel(gm, copy.copy(cm.plan), *args, "bf16")

    for label, other in (("all direct", direct(None)), ("only these", direct(set(names)))):
        ratios = {n: [] for n in names}
        for _ in range(a.trials):
            mine, theirs = step_seconds([cm, other], x)
            for n in names:
                ratios[n].append(theirs[n] / mine[n])
        for n, r in ratios.items():
            below = sum(v < 1 for v in r)
            print(f"{label:10s} {n:28s} direct/winograd {min(r):.2f}-{max(r):.2f}, below 1 in {below} of {len(r)}")


if __name__ == "__main__":
    main()
