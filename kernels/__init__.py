"""Triton kernels for the GPU backend, installed as `basisrt.kernels` (see DESIGN §2).

Kept at the top level of the repository by request; `setup.py` maps this folder to the package.

Modules (each imports without triton installed; its wrappers then raise a clear RuntimeError):
    fused_basis_conv   basis conv + 1×1 scaling conv (or dense conv / low-rank Linear) in one
                       launch, with bias, residual and activation fused (groups = 1)
"""
