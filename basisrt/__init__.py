"""basisrt: basis scaling and double pruning (Wong et al. 2021), compiled to fast kernels.

Public API:
    decompose(model)           exact SVD basis form of every Conv2d / Linear (DecomposeReport)
    profile(model, x)          per-layer parameters, MACs and bytes (CostReport)
    BasisConv2d, BasisLinear   the basis layers; scaling_parameters(model) lists their alphas
    compile(model, x)          execution plan of fused kernels, C++ on CPU, Triton on CUDA (CompiledModel);
                               .save(path), load(path, device=None)
    explain(model, x)          which ops keep a model's plan from running as one native program, and why
    dynamo_backend             the torch.compile backend: torch.compile(model, backend="basisrt") (installed
                               package) or backend=basisrt.dynamo_backend: Dynamo splits, basisrt plans each graph
    models                     reference architectures (vgg16, resnet18, mobilenetv2, densenet, vit_mlp)
"""
from . import models, transfer
from .channel_pruning import channel_prune, double_prune
from .compiler import CompiledModel, Explanation, compile, dynamo_backend, explain, load
from .cost import CostReport, LayerCost, profile
from .decomposition import DecomposeReport, decompose, decompose_layer
from .importance import energy_importance, taylor_importance
from .layers import BasisConv2d, BasisLinear, scaling_parameters
from .pruning import PruneReport, prune_basis

__version__ = "0.1.0"

__all__ = [
    "BasisConv2d", "CompiledModel", "Explanation", "compile", "dynamo_backend", "explain", "load", "BasisLinear",
    "CostReport",
    "DecomposeReport", "LayerCost",
    "PruneReport", "decompose", "decompose_layer", "models", "profile", "prune_basis", "scaling_parameters",
    "channel_prune", "double_prune", "energy_importance", "taylor_importance", "transfer",
]
