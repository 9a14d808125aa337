"""basisrt.compile: execution plans of fused kernels (DESIGN §2)."""
from .plan import CompiledModel, Explanation, Plan, Step, compile, explain, load

__all__ = ["CompiledModel", "Explanation", "Plan", "Step", "compile", "explain", "load"]
