"""Build of the C++ CPU kernels (csrc/) as one extension, basisrt._C.

Plain pybind11 + the C++ standard library: no libtorch at build time. The Triton kernels in
kernels/ install inside the package as basisrt.kernels (no top-level `kernels` module).
"""
import os
import re
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# the package's one version string, compiled into basisrt._C too
VERSION = re.search(r'^__version__ = "([^"]+)"', Path("basisrt/__init__.py").read_text(), re.M).group(1)

# compile csrc/*.cpp in parallel, one job per core (BASISRT_BUILD_JOBS=N to cap it)
ParallelCompile("BASISRT_BUILD_JOBS", default=0).install()

ext = Pybind11Extension(
    "basisrt._C",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    define_macros=[("BASISRT_C_VERSION", f'"{VERSION}"')],
    cxx_std=17,
    # Threads come from csrc/thread_pool.cpp (no OpenMP: its barriers stall behind a busy
    # neighbour, and torch bundles its own libgomp).
    # -Wno-psabi: GCC notes that passing a 32- or 64-byte vector by value has another ABI without
    # AVX / AVX-512; our vector helpers are file-local and always inlined, so no such call exists.
    extra_compile_args=["-O3", "-pthread", "-Wall", "-Wextra", "-Wno-psabi"],
    extra_link_args=["-pthread"],
)

# BASISRT_PREBUILT_EXT=1: install without compiling, using the basisrt/_C*.so already in the tree
# (bench/gpu_check.sh's prebuild: made on another machine for the GPU machine's python)
prebuilt = os.environ.get("BASISRT_PREBUILT_EXT") == "1"
if prebuilt and not glob("basisrt/_C.*.so"):
    raise SystemExit("BASISRT_PREBUILT_EXT=1 but there is no basisrt/_C.*.so in the tree")

setup(
    # every subpackage by name: a non-editable install gets only the packages listed here
    packages=["basisrt", "basisrt.bench", "basisrt.compiler", "basisrt.serve", "basisrt.kernels"],
    package_dir={"basisrt": "basisrt", "basisrt.kernels": "kernels"},
    ext_modules=[] if prebuilt else [ext],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
