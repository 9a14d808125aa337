"""basisrt.compile: execution plans of fused kernels (docs/DESIGN.md §2)."""
from .compiled import CompiledModel, Explanation, Plan, Step, load
from .entry import compile, explain
from .strategy import Strategy
from .torch_compile_backend import backend as dynamo_backend

__all__ = ["CompiledModel", "Explanation", "Plan", "Step", "Strategy", "compile", "dynamo_backend", "explain", "load"]
