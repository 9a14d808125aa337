"""basisrt.compile: execution plans of fused kernels (DESIGN §2)."""
from .capture import backend as dynamo_backend
from .plan import CompiledModel, Explanation, Plan, Step, compile, explain, load

__all__ = ["CompiledModel", "Explanation", "Plan", "Step", "compile", "dynamo_backend", "explain", "load"]
