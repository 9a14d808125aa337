"""Tampered plan files: each one loads and runs exactly as the original, or is one ValueError that
names the file; never a crash, a hang, absurd memory, or code from the file.

The mutations (several hundred, seeded: BASISRT_TAMPER_SEED, default 0) are generated here and
loaded in one subprocess (memory capped with RLIMIT_AS, a timeout) that reports one JSON line per
file, so a crash fails the test instead of killing pytest. Dangerous targets get arguments that
would create a marker file (or import a canary module that creates it) if they ever ran.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import nn

import basisrt
from basisrt import compile, decompose, load, prune_basis
from basisrt.compiler.serialize import _serialize

SEED = int(os.environ.get("BASISRT_TAMPER_SEED", "0"))


# ------------------------------------------------------------------------------------- base plans

class Native(nn.Module):
    """Every CPU step class: basis and depthwise convs (BN folded, residual add and ReLU fused),
    max / padded average / global pools, a concatenation, a BatchNorm no conv absorbs (a channel
    affine step), a flatten and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.pool, self.smooth = nn.MaxPool2d(2), nn.AvgPool2d(3, stride=1, padding=1)
        self.branch, self.bn2 = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(24)
        self.gap, self.flat, self.head = nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(24, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.conv(self.dw(y)) + y)
        y = self.smooth(self.pool(y))
        y = torch.relu(self.bn2(torch.cat([y, self.branch(y)], 1)))
        return self.head(self.flat(self.gap(y)))


class Mixed(nn.Module):
    """PyTorch steps: oneDNN convs and linear (TorchConvStep), a parameter read with get_attr and
    added with broadcasting, a pool with a divisor override, LayerNorm, GELU, tensor methods,
    softmax, x.shape."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.AvgPool2d(2, ceil_mode=True, divisor_override=3)
        self.pos = nn.Parameter(torch.randn(1, 16, 10, 10) * 0.1)  # a map, not per channel: stays an add
        self.norm, self.act, self.head = nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = self.pool(self.conv(y) + y + self.pos)
        t = self.act(self.norm(y.flatten(2).transpose(1, 2)))
        t = torch.softmax(t, dim=-1) * t.shape[1]
        return self.head(t.mean(1))


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return model


@pytest.fixture(scope="module")
def base_plans(tmp_path_factory):
    """{'native': (path, x, y), 'mixed': (path, x, y)}: saved plans, an input, the expected output."""
    d = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    native = decompose(_randomise_bn(Native()).eval()).model
    prune_basis(native, "ratio", 0.25)
    mixed = _randomise_bn(Mixed()).eval()
    x = torch.randn(2, 3, 10, 10)
    out = {}
    for name, compiled in (("native", compile(native, x, dense_backend="basisrt")),
                           ("mixed", compile(mixed, x, dense_backend="torch"))):
        path = d / f"{name}.basisrt"
        compiled.save(path)
        out[name] = (path, x, compiled(x))
    kinds = {type(m).__name__ for m in load(out["native"][0]).module.modules()}
    assert {"FusedConv2d", "FusedLinear", "PoolStep", "ChannelAffineStep"} <= kinds
    assert {"TorchConvStep", "LayerNorm", "GELU", "AvgPool2d"} <= {type(m).__name__
                                                                   for m in load(out["mixed"][0]).module.modules()}
    return out


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["basisrt_plan"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(plan: dict | str, tensors: dict[str, torch.Tensor]) -> bytes:
    """A plan file as an attacker would write it: with a valid digest over whatever it holds."""
    return _serialize(tensors, plan if isinstance(plan, str) else json.dumps(plan))


# -------------------------------------------------------------------------------------- mutations

def _dangerous_calls(marker: str, evil_pickle: str, prev: str) -> list[tuple[str, list]]:
    """(target, args) for call_function nodes that would create `marker` if they were called."""
    node = {"node": prev}
    touch = f"open({marker!r}, 'w').close()"
    return [
        ("builtins.exec", [touch]), ("builtins.eval", [f"__import__('pathlib').Path({marker!r}).touch()"]),
        ("builtins.open", [marker, "w"]), ("builtins.__import__", ["basisrt_canary"]),
        ("importlib.import_module", ["basisrt_canary"]), ("os.system", [f"touch {marker}"]),
        ("posix.system", [f"touch {marker}"]), ("subprocess.Popen", [["touch", marker]]),
        ("subprocess.run", [["touch", marker]]), ("subprocess.check_call", [["touch", marker]]),
        ("torch.save", [node, marker]), ("torch.load", [evil_pickle]), ("pickle.load", [evil_pickle]),
        ("pickle.loads", [evil_pickle]), ("torch.hub.load", ["evil/repo", "model"]),
        ("builtins.compile", [touch, "x", "exec"]), ("builtins.getattr", [node, "__class__"]),
        ("builtins.getattr", [node, "data_ptr"]), ("builtins.getattr", [node, "__reduce_ex__"]),
        ("builtins.setattr", [node, "shape", 1]), ("operator.attrgetter", ["__class__"]),
        ("operator.methodcaller", ["__init__"]), ("ctypes.string_at", [0]), ("os._exit", [3]), ("sys.exit", [3]),
        ("torch.ops.aten.add.Tensor", [node, node]), ("torch.zeros", [{"tuple": [1 << 20, 1 << 20]}]),
        ("torch.empty", [{"tuple": [1 << 40]}]), ("operator.mul", [[1, 2, 3], 1 << 40]),
        ("operator.mul", ["x" * 10, 1 << 40]), ("operator.pow", [10, 1 << 30]),
        ("operator.mod", ["%*d", {"tuple": [1 << 34, 1]}]),
        ("torch.nn.functional.__builtins__.exec", [touch]), ("torch.storage.UntypedStorage.from_file", [marker]),
        ("numpy.save", [marker, node]), ("shutil.rmtree", ["/"]), ("code.interact", []),
        ("torch.fx.graph_module.GraphModule", [node]), ("torch.jit.load", [evil_pickle]),
        ("torch.nn.functional.pad", [node, {"tuple": [1 << 40, 1 << 40]}]),
        ("torch.nn.functional.interpolate", [node]),  # runs, but no size: fails cleanly in the shape pass
    ]


_DANGEROUS_METHODS = [
    "numpy", "tolist", "data_ptr", "storage", "untyped_storage", "register_hook", "apply_", "map_", "__reduce_ex__",
    "__class__", "__setattr__", "__init__", "__getattribute__", "new_empty", "new_zeros", "resize_", "set_", "copy_",
    "share_memory_", "pin_memory", "item", "cuda", "backward", "relu(); import os; x.relu", "__del__", "_cdata",
    "repeat", "expand", "__len__",
]

_BAD_VALUES = [
    -7, 1 << 40, 10 ** 30, 1.5, float("nan"), {"float": "nan"}, {"float": "inf"}, {"float": "-inf"}, "garbage",
    "relu; import os", [], {"tuple": []}, {"tuple": [1, 2, 3, 4, 5]}, {"tuple": [-1, -1]}, {"tuple": [1 << 40, 3]},
    {"dict": {"a": 1}}, {"unknown": 1}, {"node": "x"}, {"float": "oops"}, {"dtype": "load"}, {"device": "tpu"},
    "NaN", {"tuple": [1.5, 1.5]}, {"tuple": ["a", "b"]}, [[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]],
]

_SWAP_CLASSES = [
    "basisrt.compiler.plan.CompiledModel", "torch.nn.Module", "torch.nn.modules.module.Module",
    "torch.nn.modules.container.Sequential", "torch.nn.modules.container.ModuleDict",
    "torch.fx.graph_module.GraphModule", "torch.nn.modules.rnn.LSTM", "torch.nn.modules.activation.MultiheadAttention",
    "torch.nn.parallel.DistributedDataParallel", "basisrt.layers.BasisConv2d",
    "basisrt.compiler.autotune.MeasuredChooser",
    "subprocess.Popen", "os.system", "builtins.object", "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.activation.GELU", "basisrt.compiler.cpu_steps.PoolStep",
    "basisrt.compiler.cpu_steps.ChannelAffineStep", "basisrt.compiler.gpu_steps.GPUFusedConv2d",
    "torch.nn.modules.normalization.LayerNorm", "basisrt.compiler.cpu_steps.TorchConvStep",
    "torch.nn.modules.activation.PReLU", "torch.nn.ReLU",
]


def _mutations(base: dict, workdir: Path, rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(base plan, label, file bytes) of every mutation."""
    marker, evil = str(workdir / "MARKER"), str(workdir / "evil.pkl")
    out: list[tuple[str, str, bytes]] = []
    for name, (path, _, _) in base.items():
        plan0, tensors0 = _read(path)
        raw0 = path.read_bytes()

        def add(label: str, data: bytes) -> None:
            out.append((name, f"{name}: {label}", data))

        def mutate(label: str, fn) -> None:
            plan, tensors = copy.deepcopy(plan0), dict(tensors0)
            fn(plan, tensors)
            add(label, _write(plan, tensors))

        inner = [i for i, n in enumerate(plan0["graph"]) if n["op"] not in ("placeholder", "output")]
        leaves = [k for k, m in plan0["modules"].items() if "class" in m]

        # graph nodes calling dangerous functions / methods
        for target, args in _dangerous_calls(marker, evil, plan0["graph"][0]["name"]):
            i = rng.choice(inner)

            def call(plan, tensors, i=i, target=target, args=args):
                plan["graph"][i].update(op="call_function", target=target, args={"tuple": args},
                                        kwargs={"dict": {}})
            mutate(f"node {i} calls {target}", call)
        for method in _DANGEROUS_METHODS:
            i = rng.choice(inner)

            def meth(plan, tensors, i=i, method=method):
                plan["graph"][i].update(op="call_method", target=method,
                                        args={"tuple": [{"node": plan["graph"][0]["name"]}, 1 << 40]},
                                        kwargs={"dict": {}})
            mutate(f"node {i} calls method {method}", meth)

        weights = [n["name"] for n in plan0["graph"] if n["op"] == "get_attr"]
        for k, (op, target) in enumerate([("call_method", "mul_"), ("call_function", "_operator.iadd")]
                                         if weights else []):
            def in_place(plan, tensors, op=op, target=target):
                later = next(n for n in plan["graph"] if n["op"] not in ("placeholder", "get_attr"))
                later.update(op=op, target=target, args={"tuple": [{"node": weights[0]}, 0.0]}, kwargs={"dict": {}})
            mutate(f"{target} on a weight", in_place)

        def inject_kwarg(plan, tensors):
            plan["graph"][inner[0]]["kwargs"] = {"dict": {f"a=1) or open({marker!r}, 'w') or (b": 1}}
        mutate("kwargs key injection", inject_kwarg)

        def inject_input(plan, tensors):
            plan["graph"][0]["target"] = f"x, y=open({marker!r}, 'w')"
        mutate("input name injection", inject_input)

        def inject_module(plan, tensors):
            j = next(k for k, n in enumerate(plan["graph"]) if n["op"] == "call_module")
            plan["graph"][j]["target"] = "__class__.__init__.__globals__"
        mutate("module target injection", inject_module)

        # module classes swapped
        for cls in _SWAP_CLASSES:
            leaf = rng.choice(leaves)
            if plan0["modules"][leaf]["class"].endswith("." + cls.rpartition(".")[2]):
                continue

            def swap(plan, tensors, leaf=leaf, cls=cls):
                plan["modules"][leaf]["class"] = cls
            mutate(f"module {leaf} class -> {cls}", swap)

        # attributes: wrong types, negative, huge, NaN, missing, extra
        for _ in range(45):
            leaf = rng.choice(leaves)
            attr = rng.choice(sorted(plan0["modules"][leaf]["attrs"]))
            value = rng.choice(_BAD_VALUES)

            def bad_attr(plan, tensors, leaf=leaf, attr=attr, value=value):
                plan["modules"][leaf]["attrs"][attr] = value
            mutate(f"{leaf}.{attr} = {str(value)[:40]}", bad_attr)
        for attr_name in ("stride", "kernel", "padding", "dilation", "groups", "num_threads", "rank", "activation",
                          "in_channels", "out_channels", "kind", "training", "eps", "normalized_shape"):
            for leaf in leaves:
                if attr_name not in plan0["modules"][leaf]["attrs"]:
                    continue
                bad = {"stride": {"tuple": [0, 0]}, "kernel": {"tuple": [-1, -1]}, "padding": {"tuple": [-1, 0]},
                       "dilation": {"tuple": [0, 1]}, "groups": 0, "num_threads": 10 ** 6, "rank": -1,
                       "activation": "gelu_erf", "in_channels": 0, "out_channels": 1 << 30, "kind": "min",
                       "training": True, "eps": 0.0, "normalized_shape": {"tuple": [0]}}[attr_name]

                def geometry(plan, tensors, leaf=leaf, attr_name=attr_name, bad=bad):
                    plan["modules"][leaf]["attrs"][attr_name] = bad
                mutate(f"{leaf}.{attr_name} = {bad}", geometry)
                break
        for label, fn in (
            ("attribute deleted", lambda a: a.pop(rng.choice(sorted(a)))),
            ("attribute added", lambda a: a.update(evil=1)),
            ("attribute renamed", lambda a: a.update(__class__=a.pop(rng.choice(sorted(a))))),
        ):
            leaf = rng.choice(leaves)
            mutate(f"{leaf}: {label}", lambda plan, tensors, leaf=leaf, fn=fn: fn(plan["modules"][leaf]["attrs"]))

        # tensors: shapes, dtypes, missing, extra. Shapes change only where attributes pin them: a
        # container's tensor (x + self.pos) or a TorchConvStep's conv weight (whose shape is its
        # kernel) may take another shape and still be a valid plan, computing something else.
        names = sorted(tensors0)
        owner = {k: plan0["modules"].get(k.rpartition(".")[0], {}).get("class", "") for k in names}
        pinned = [k for k in names if owner[k].rpartition(".")[2] not in ("", "TorchConvStep")]
        for _ in range(12):
            change = rng.choice(["row", "col", "float64", "float16", "int32", "scalar", "empty", "flat"])
            k = rng.choice(names if change in ("float64", "float16", "int32") else pinned)

            def bad_tensor(plan, tensors, k=k, change=change):
                t = tensors[k]
                tensors[k] = {"row": lambda: torch.cat([t, t[:1]]) if t.dim() else t.reshape(1),
                              "col": lambda: torch.cat([t, t[..., :1]], -1) if t.dim() else t.reshape(1, 1),
                              "float64": lambda: t.double(), "float16": lambda: t.half(), "int32": lambda: t.int(),
                              "scalar": lambda: t.reshape(-1)[0].clone(), "empty": lambda: t.reshape(-1)[:0].clone(),
                              "flat": lambda: t.reshape(-1).clone() if t.dim() != 1 else t.reshape(1, -1).clone()
                              }[change]().contiguous()
            mutate(f"tensor {k}: {change}", bad_tensor)
        mutate("tensor missing", lambda plan, tensors: tensors.pop(rng.choice(names)))
        mutate("tensor extra", lambda plan, tensors: tensors.update(evil=torch.ones(3)))

        def declared_absent(plan, tensors):
            entry = next(e for e in plan["modules"].values() if any(e["buffers"].values()))
            entry["buffers"][next(k for k, v in entry["buffers"].items() if v)] = False
        mutate("tensor declared absent", declared_absent)

        # graph structure
        for label, fn in (
            ("nodes swapped", lambda gr: gr.__setitem__(slice(inner[0], inner[0] + 2),
                                                         gr[inner[0]:inner[0] + 2][::-1])),
            ("name repeated", lambda gr: gr[inner[1]].update(name=gr[inner[0]]["name"])),
            ("output removed", lambda gr: gr.pop()),
            ("output twice", lambda gr: gr.append(copy.deepcopy(gr[-1]))),
            ("input removed", lambda gr: gr.pop(0)),
            ("input twice", lambda gr: gr.insert(1, dict(gr[0], name="other"))),
            ("unknown op", lambda gr: gr[inner[0]].update(op="call_evil")),
            ("get_attr of an attribute", lambda gr: gr[inner[0]].update(op="get_attr", target="training",
                                                                         args={"tuple": []})),
            ("get_attr of a module", lambda gr: gr[inner[0]].update(op="get_attr", target=leaves[0],
                                                                     args={"tuple": []})),
            ("call_module of the root", lambda gr: gr[inner[0]].update(op="call_module", target="")),
            ("call_module unknown", lambda gr: gr[inner[0]].update(op="call_module", target="nope")),
            ("extra argument", lambda gr: gr[inner[0]]["args"]["tuple"].append({"node": gr[0]["name"]})),
            ("keyword argument", lambda gr: gr[inner[0]].update(kwargs={"dict": {"out": {"node": gr[0]["name"]}}})),
            ("args a list", lambda gr: gr[inner[0]].update(args=[{"node": gr[0]["name"]}])),
            ("extra node field", lambda gr: gr[inner[0]].update(evil=1)),
            ("node field missing", lambda gr: gr[inner[0]].pop("kwargs")),
            ("forward reference", lambda gr: gr[inner[0]].update(args={"tuple": [{"node": gr[-1]["name"]}]})),
            ("unknown reference", lambda gr: gr[inner[0]].update(args={"tuple": [{"node": "nope"}]})),
            ("graph not a list", lambda gr: gr.__setitem__(slice(None), [])),
            ("deep argument", lambda gr: gr[inner[0]]["args"]["tuple"].append(json.loads("[" * 200 + "]" * 200))),
            ("long argument", lambda gr: gr[inner[0]]["args"]["tuple"].append(list(range(100_000)))),
            ("huge int argument", lambda gr: gr[inner[0]]["args"]["tuple"].append(1 << 100)),
        ):
            mutate(label, lambda plan, tensors, fn=fn: fn(plan["graph"]))

        # top-level fields
        for label, change in (
            ("format", {"format": "basisrt-plan/2"}),
            ("input zero", {"input": {"shape": [0, 10, 10], "dtype": "float32"}}),
            ("input negative", {"input": {"shape": [-3, 10, 10], "dtype": "float32"}}),
            ("input huge", {"input": {"shape": [1 << 20, 1 << 20, 1 << 20], "dtype": "float32"}}),
            ("input channels", {"input": {"shape": [4, 10, 10], "dtype": "float32"}}),
            ("input string", {"input": {"shape": "3,10,10", "dtype": "float32"}}),
            ("input dims", {"input": {"shape": [1] * 9, "dtype": "float32"}}),
            ("input dtype", {"input": {"shape": [3, 10, 10], "dtype": "object"}}),
            ("input int dtype", {"input": {"shape": [3, 10, 10], "dtype": "int64"}}),
            ("device", {"device": "tpu"}), ("device index", {"device": "cuda:99999"}), ("device type", {"device": 5}),
            ("cuda_graph", {"cuda_graph": "yes"}), ("extra field", {"evil": 1}),
            ("steps extra key", {"steps": [dict(plan0["steps"][0], evil=1)]}),
            ("steps negative macs", {"steps": [dict(plan0["steps"][0], macs=-1)]}),
            ("steps wrong type", {"steps": [dict(plan0["steps"][0], strategy=5)]}), ("steps dict", {"steps": {}}),
            ("modules no root", {"modules": {k: v for k, v in plan0["modules"].items() if k}}),
            ("modules root class", {"modules": {**plan0["modules"], "": {**plan0["modules"][""], "class": "os.system",
                                                                           "attrs": {}}}}),
            ("module orphan", {"modules": {**plan0["modules"], "a.b": {"parameters": {}, "buffers": {}}}}),
            ("module dunder", {"modules": {**plan0["modules"], "__class__": {"parameters": {}, "buffers": {}}}}),
            ("module in a step", {"modules": {**plan0["modules"],
                                              f"{leaves[0]}.x": {"parameters": {}, "buffers": {}}}}),
            ("module bad name", {"modules": {**plan0["modules"], "a b": {"parameters": {}, "buffers": {}}}}),
            ("format removed", {"format": None}),
        ):
            mutate(f"plan {label}", lambda plan, tensors, change=change: [
                plan.pop(k) if v is None else plan.__setitem__(k, v) for k, v in change.items()])

        # harmless changes: these load and compute the same
        def threads(plan):
            for m in plan["modules"].values():
                if "num_threads" in m.get("attrs", {}):
                    m["attrs"]["num_threads"] = 2
        for label, fn in (
            ("threads of the steps", threads), ("cuda_graph on a CPU plan", lambda plan: plan.update(cuda_graph=True)),
            ("step details", lambda plan: plan["steps"][0].update(detail="edited", macs=7)),
            ("no device (an older plan)", lambda plan: plan.pop("device")),
        ):
            mutate(f"harmless: {label}", lambda plan, tensors, fn=fn: fn(plan))
        add("harmless: JSON re-indented", _write(json.dumps(plan0, indent=3), tensors0))

        # plan JSON as text
        text0 = json.dumps(plan0)
        for label, text in (
            ("truncated", text0[: len(text0) // 2]), ("garbage", "\x00garbage{"), ("null", "null"), ("number", "5"),
            ("empty object", "{}"), ("deeply nested", "[" * 100_000 + "]" * 100_000),
            ("nested object", '{"a":' * 50_000 + "1" + "}" * 50_000), ("NaN", "NaN"),
            ("huge", json.dumps({**plan0, "pad": "x" * (17 << 20)})),
        ):
            add(f"plan JSON {label}", _write(text, tensors0))
        add("metadata extra key", st_save(tensors0, metadata={"basisrt_plan": text0, "evil": "1"}))
        add("metadata without plan", st_save(tensors0, metadata={"other": text0}))
        add("digest removed", st_save(tensors0, metadata={"basisrt_plan": text0}))  # an older file: loads
        add("digest wrong", st_save(tensors0, metadata={"basisrt_plan": text0, "basisrt_sha256": "0" * 64}))

        # bytes: header length, truncation, appended data, flips
        n = int.from_bytes(raw0[:8], "little")
        for label, length in (("zero", 0), ("one", 1), ("huge", (1 << 64) - 1), ("past the end", len(raw0)),
                              ("minus one", n - 1), ("plus one", n + 1), ("200 MB", 200_000_000)):
            add(f"header length {label}", length.to_bytes(8, "little") + raw0[8:])
        for cut in (0, 4, 8, 9, n // 2, 8 + n, 8 + n + 1, len(raw0) // 2, len(raw0) - 1):
            add(f"truncated at {cut}", raw0[:cut])
        add("bytes appended", raw0 + b"\x00" * 16)
        for _ in range(30):
            data = bytearray(raw0)
            flips = rng.randint(1, 4)
            where = [rng.randrange(len(data)) if rng.random() < 0.5 else rng.randrange(8 + n) for _ in range(flips)]
            for w in where:
                data[w] ^= 1 << rng.randrange(8)
            add(f"bits flipped at {where}", bytes(data))
    out.append(("native", "not a plan: text", b"hello, this is not a plan\n" * 10))
    out.append(("native", "not a plan: random bytes", rng.randbytes(4096)))
    out.append(("native", "not a plan: empty", b""))
    out.append(("native", "not a plan: safetensors without metadata", st_save({"w": torch.ones(2)})))
    return out


CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(1)
import basisrt
from safetensors.torch import load_file

manifest = json.load(open(sys.argv[1]))
assert basisrt.__file__ == manifest["basisrt"], (basisrt.__file__, manifest["basisrt"])  # the code under test
refs = {name: load_file(path) for name, path in manifest["refs"].items()}
for name, path in manifest["bases"].items():  # the untampered plans load and run (and warm up imports)
    assert torch.equal(basisrt.load(path)(refs[name]["x"]), refs[name]["y"]), name
vm = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:"))) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 30), resource.RLIM_INFINITY))
for i, (base, label, path) in enumerate(manifest["files"]):
    start = time.perf_counter()
    report = {"i": i}
    try:
        plan = basisrt.load(path)
    except ValueError as e:
        report["outcome"] = "ValueError" if os.path.basename(path) in str(e) else "ValueError without the file name"
        report["message"] = str(e)[:500]
    except BaseException as e:
        report["outcome"] = f"{type(e).__name__} at load"
        report["message"] = str(e)[:500]
    else:
        try:
            with torch.inference_mode():
                y = plan(refs[base]["x"])
            report["outcome"] = "loaded, same output" if torch.equal(y, refs[base]["y"]) else "loaded, other output"
        except BaseException as e:
            report["outcome"] = f"{type(e).__name__} when run"
            report["message"] = str(e)[:500]
    report["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(report), flush=True)
"""


def test_tampered_plans_load_exactly_or_fail_with_a_value_error(base_plans, tmp_path):
    rng = random.Random(SEED)
    work = tmp_path / "work"
    (work / "canary").mkdir(parents=True)
    marker = work / "MARKER"
    (work / "canary" / "basisrt_canary.py").write_text(f"open({str(marker)!r}, 'w').close()\n")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    (work / "evil.pkl").write_bytes(pickle.dumps(Evil()))

    mutations = _mutations(base_plans, work, rng)
    assert len(mutations) >= 200
    files = []
    for i, (base, label, data) in enumerate(mutations):
        path = work / f"m{i:04d}.basisrt"
        path.write_bytes(data)
        files.append((base, label, str(path)))
    refs = {}
    for name, (_, x, y) in base_plans.items():
        refs[name] = str(work / f"{name}.io.safetensors")
        save_file({"x": x, "y": y}, refs[name])
    bases = {name: str(path) for name, (path, _, _) in base_plans.items()}
    (work / "manifest.json").write_text(json.dumps({"files": files, "refs": refs, "bases": bases,
                                                    "basisrt": basisrt.__file__}))

    source = str(Path(basisrt.__file__).parent.parent)  # the checkout under test, before any installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, str(work / "canary")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(work / "manifest.json")], capture_output=True, text=True,
                          timeout=120, env=env, cwd=work)
    reports = {r["i"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert not marker.exists(), "a tampered plan ran code from the file"
    missing = [files[i][1] for i in range(len(files)) if i not in reports]
    assert proc.returncode == 0 and not missing, (
        f"the loading process died (rc {proc.returncode}) at {missing[:1]}: {proc.stderr[-3000:]}")
    counts: dict[str, int] = {}
    for i, r in sorted(reports.items()):
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"\n{len(files)} tampered plans (seed {SEED}): {counts}")
    bad = [(files[i][1], r["outcome"], r.get("message", "")) for i, r in sorted(reports.items())
           if r["outcome"] not in ("ValueError", "loaded, same output")]
    assert not bad, "\n".join(map(str, bad[:20]))
    slow = [(files[i][1], r["seconds"]) for i, r in reports.items() if r["seconds"] > 5]
    assert not slow, slow
    harmless = [r["outcome"] for i, r in reports.items() if "harmless" in files[i][1]]
    assert harmless and set(harmless) == {"loaded, same output"}, harmless
    assert counts.get("ValueError", 0) >= 200, counts


# ----------------------------------------------------------------------------- clear error messages

def _tampered(path: Path, out: Path, change) -> Path:
    plan, tensors = _read(path)
    change(plan, tensors)
    out.write_bytes(_write(plan, tensors))
    return out


def _leaf(plan: dict, cls: str, **attrs) -> str:
    """The first module of class `cls` (its last name) whose attributes include `attrs`."""
    return next(k for k, m in plan["modules"].items() if m.get("class", "").endswith("." + cls)
                and all(m["attrs"].get(a) == v for a, v in attrs.items()))


def _set_attr(cls: str, attr: str, value, **where):
    def change(plan, tensors):
        plan["modules"][_leaf(plan, cls, **where)]["attrs"][attr] = value
    return change


@pytest.mark.parametrize("content", [
    b"this is a text file, not a plan\n" * 4, bytes(random.Random(1).randbytes(1000)), b"", b"\x01\x00",
    (1 << 40).to_bytes(8, "little") + b'{"__metadata__": {}}',  # safetensors: "header too large"
    (20).to_bytes(8, "little") + b'["not", "an", "object"]',
], ids=["text", "random", "empty", "short", "huge header", "json list"])
def test_a_file_that_is_not_a_plan(tmp_path, content):
    path = tmp_path / "thing.basisrt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not a basisrt plan file \(.+\)$"):
        load(path)


# what each case raised before plans were checked: ZeroDivisionError, KeyError: 'gelu', TypeError (Step)
@pytest.mark.parametrize("change, message", [
    (_set_attr("PoolStep", "stride", {"tuple": [0, 0]}, kind="max"),
     r"module 'pool_pool' \(PoolStep\): attribute 'stride' must be a tuple of 2 ints in \[1, 65536\], got \(0, 0\)"),
    (_set_attr("FusedConv2d", "activation", "gelu_erf"),
     r"module '\w+' \(FusedConv2d\): attribute 'activation' must be one of \[None, 'relu', 'relu6', 'sigmoid', .*"
     r"'leaky_relu\(<slope>\)', got 'gelu_erf'"),
    (_set_attr("FusedConv2d", "activation", "leaky_relu(nan)"),
     r"module '\w+' \(FusedConv2d\): attribute 'activation' must be one of .* got 'leaky_relu\(nan\)'"),
    (lambda plan, tensors: plan["steps"][0].update(evil=1),
     r"steps\[0\] must be an object of exactly name \(str\), strategy \(str\), macs \(int >= 0\) and detail \(str\)"),
    (_set_attr("FusedConv2d", "kernel", {"tuple": [-1, -1]}), r"attribute 'kernel' must be a tuple of 2 ints in \[1,"),
    (_set_attr("FusedConv2d", "stride", {"tuple": [0, 1]}), r"attribute 'stride' must be a tuple of 2 ints in \[1,"),
    (_set_attr("FusedConv2d", "dilation", {"tuple": [1, 0]}),
     r"attribute 'dilation' must be a tuple of 2 ints in \[1,"),
    (_set_attr("FusedConv2d", "padding", {"tuple": [-1, 1]}), r"attribute 'padding' must be a tuple of 2 ints in \[0,"),
    (_set_attr("FusedConv2d", "num_threads", 10 ** 6),
     r"attribute 'num_threads' must be None or an int in \[1, 1024\]"),
    (_set_attr("FusedConv2d", "groups", 3), r"groups=3 does not divide out_channels=16"),
    (_set_attr("FusedConv2d", "prefer_fp32", 1), r"attribute 'prefer_fp32' must be True or False, got 1"),
    (_set_attr("FusedConv2d", "rank", 20), r"buffer 'B' must have shape"),  # 5 would fit the padding
    (_set_attr("FusedConv2d", "kernel", {"tuple": [5, 5]}), r"buffer 'B' must have shape"),
    (_set_attr("PoolStep", "kernel", {"tuple": [64, 64]}, kind="max"),
     r"node 'pool' has a pool kernel \(64, 64\) that does not fit a 10x10 input"),
    (_set_attr("PoolStep", "padding", {"tuple": [2, 2]}, kind="max"), r"attribute 'padding' must be at most half"),
    (_set_attr("ChannelAffineStep", "training", True), r"attribute 'training' must be False"),
    (_set_attr("FusedLinear", "residual", True),
     r"node 'head_step' calls module 'head_step' with 1 argument\(s\) and 0 keyword\(s\); it takes 2 graph value"),
    (_set_attr("FusedConv2d", "out_channels", 17), r"buffer '\w+' must have shape"),
    (lambda plan, tensors: plan["graph"][3].update(op="call_function", target="builtins.exec",
                                                   args={"tuple": ["print(1)"]}),
     r"node '\w+' calls builtins.exec, which plans may not call"),
    (lambda plan, tensors: plan["graph"][3].update(op="call_method", target="numpy"),
     r"node '\w+' calls tensor method .numpy\(\), which plans may not call"),
    (lambda plan, tensors: plan["modules"][_leaf(plan, "PoolStep")].update({"class": "subprocess.Popen"}),
     r"module '\w+' is of class subprocess.Popen, which plans may not hold"),
    (lambda plan, tensors: tensors.update({"stem_step.B": tensors["stem_step.B"].double()}),
     r"tensor 'stem_step.B' is float64, not the plan's dtype float32"),
    (lambda plan, tensors: tensors.update(evil=torch.ones(1)),
     r"the file holds tensor\(s\) no module declares: 'evil'"),
    (lambda plan, tensors: tensors.pop("stem_step.B"),
     r"tensor 'stem_step.B' of module 'stem_step' \(FusedConv2d\) is not in the file"),
    (lambda plan, tensors: plan["input"].update(shape=[4, 10, 10]),
     r"node 'stem_step' passes a float32 tensor of shape \(1, 4, 10, 10\) to this conv step, which takes 3 channels"),
], ids=["pool stride 0", "activation gelu_erf", "activation leaky nan", "step field", "kernel -1", "stride 0",
        "dilation 0", "padding -1", "threads 1e6", "groups 3", "prefer_fp32 1", "rank 20", "kernel 5", "pool kernel 64",
    "pool padding",
        "training", "residual", "out channels", "exec", "numpy", "class Popen", "float64 weights", "extra tensor",
        "missing tensor", "input channels"])
def test_bad_plans_are_one_clear_value_error(base_plans, tmp_path, change, message):
    bad = _tampered(base_plans["native"][0], tmp_path / "bad.basisrt", change)
    with pytest.raises(ValueError, match=message) as e:
        load(bad)
    assert str(e.value).startswith(f"{bad}: "), str(e.value)


def test_a_plan_may_not_modify_its_own_tensors(base_plans, tmp_path):
    def scale_pos(plan, tensors):
        node = next(n for n in plan["graph"] if n["op"] == "call_function" and n["target"] == "_operator.add")
        node.update(op="call_method", target="mul_", args={"tuple": [{"node": "pos"}, 2.0]})
    bad = _tampered(base_plans["mixed"][0], tmp_path / "bad.basisrt", scale_pos)
    with pytest.raises(ValueError, match=r"node 'add_1' modifies the plan's tensor 'pos' in place, which plans"):
        load(bad)


def test_a_changed_byte_breaks_the_digest(base_plans, tmp_path):
    data = bytearray(base_plans["native"][0].read_bytes())
    data[-3] ^= 0x10  # a weight
    bad = tmp_path / "flipped.basisrt"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match their SHA-256 digest: the file is corrupt or was altered"):
        load(bad)


def test_save_refuses_what_plans_may_not_hold(tmp_path):
    class Net(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how, self.conv, self.act = how, nn.Conv2d(3, 4, 3), nn.PReLU()

        def forward(self, x):
            y = self.conv(x)
            if self.how == "function":
                return torch.cumprod(y, 1)
            if self.how == "method":
                return y.cumprod(1)
            return self.act(y)

    x = torch.randn(1, 3, 8, 8)
    for how, message in (
        ("function", r"cannot save a plan calling torch.cumprod \(node 'cumprod'\): not on basisrt's list of plan "
                     r"operations"),
        ("method", r"cannot save a plan calling tensor method .cumprod\(\) \(node 'cumprod'\): not on basisrt's list"),
        ("module", r"cannot save a plan holding module 'act' of class torch.nn.modules.activation.PReLU: not on "
                   r"basisrt's list of plan modules"),
    ):
        compiled = compile(Net(how).eval(), x, dense_backend="basisrt")
        with pytest.raises(ValueError, match=message):
            compiled.save(tmp_path / f"{how}.basisrt")
        assert not (tmp_path / f"{how}.basisrt").exists()


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(scope="module")
def triton_plan(tmp_path_factory) -> Path:
    """A small pruned net compiled with Triton steps, saved."""
    from nets import pruned_net
    device = "cpu" if INTERPRETED else "cuda"
    path = tmp_path_factory.mktemp("triton") / "triton.basisrt"
    compile(pruned_net().to(device), torch.randn(1, 3, 12, 10, device=device), backend="triton").save(path)
    return path


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or not (INTERPRETED or torch.cuda.is_available()),
                    reason="needs triton, and a CUDA GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("attr, value, message", [
    ("precision", "fp8", r"attribute 'precision' must be one of \['ieee', 'tf32', 'tf32x3'\]"),
    ("config", {"dict": {"BLOCK_P": 3}}, r"attribute 'config' must be None or a dict of BLOCK_P"),
    ("groups", 2, r"groups=2 does not divide|the Triton step runs groups=1 only"),
    ("stride", {"tuple": [0, 0]}, r"attribute 'stride' must be a tuple of 2 ints in \[1,"),
], ids=["precision", "config", "groups", "stride"])
def test_triton_step_attributes_are_checked(triton_plan, tmp_path, attr, value, message):
    bad = _tampered(triton_plan, tmp_path / "bad.basisrt", _set_attr("GPUFusedConv2d", attr, value))
    with pytest.raises(ValueError, match=message):
        load(bad)
