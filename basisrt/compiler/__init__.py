"""basisrt.compile: execution plans of fused kernels (DESIGN §2)."""
from .plan import CompiledModel, Plan, Step, compile, load

__all__ = ["CompiledModel", "Plan", "Step", "compile", "load"]
