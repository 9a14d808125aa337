"""Triton kernels for the GPU backend, installed as `basisrt.kernels` (see DESIGN §2).

Kept at the top level of the repository by request; `setup.py` maps this folder to the package.
"""
