#!/usr/bin/env bash
# The GPU check, in one call on a bare CUDA machine (the project's lent H200): install, build, the
# whole test suite (GPU tests included), `basisrt bench` with the GPU engines, per-layer kernel timings.
#
#   bash bench/gpu_check.sh OUTDIR [STAGE ...]     stages: prebuild (here), env build tests bench micro suite
#                                                   (default: all but prebuild)
#
# Prepare here first (no GPU needed), then make ONE call (the device tool's `run`):
#   bash bench/gpu_check.sh /tmp/x prebuild   basisrt/_C for the H200 image's python 3.12 (PREBUILD_PY)
#   .whl/: wheels of what that image lacks (device README): torch-pruning starlette uvicorn ruff==0.17.6
#          mlxtend httptools websockets
#   run: command "bash bench/gpu_check.sh $OUT", carry [".whl", "basisrt/_C.cpython-312-x86_64-linux-gnu.so"]
#        (and ".triton_cache.tgz", a previous call's triton_cache.tgz, to skip its kernel compiles)
# Seen on the H200 machine (2026-12-04): it starts in about 30 s; building basisrt._C there takes
# 140-175 s (hence prebuild); Triton's compiles dominate the GPU tests (113 in 120 s on 14 workers).
#
# Each stage has its own time limit; after each one every log and result so far is packed into
# OUTDIR/results.tgz (the device tool brings back only a few files), so a call cut short still
# returns what ran. Packages the machine lacks come as wheels in .whl/ (pure
# installs into /tmp/site, no network). TRITON_CACHE_DIR is kept in OUTDIR/triton_cache.tgz and
# restored from .triton_cache.tgz when present, so a second call skips the kernel compiles.
set -uo pipefail
DEST=${1:?usage: gpu_check.sh OUTDIR [STAGE ...]}
shift
STAGES=${*:-env build tests bench micro suite}
OUT=/tmp/gpu_check  # the logs, packed into $DEST after each stage
mkdir -p "$OUT" "$DEST"
DEST=$(cd "$DEST" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache
[ -f .triton_cache.tgz ] && mkdir -p $TRITON_CACHE_DIR && tar xzf .triton_cache.tgz -C $TRITON_CACHE_DIR
SECONDS=0
has() { [[ " $STAGES " == *" $1 "* ]]; }
pack() {
  tar czf "$DEST/results.tgz" -C "$OUT" .
  [ -d $TRITON_CACHE_DIR ] && tar czf "$DEST/triton_cache.tgz" -C $TRITON_CACHE_DIR .
}
stage() { pack; echo "=== $1 ($SECONDS s)"; }
# GPU test files: what skips or runs interpreted without CUDA
GPU_TESTS="tests/test_triton_fused.py tests/test_cuda_graph.py tests/test_plan_io.py tests/test_bench_smoke.py"

if has env; then
  stage env
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/env.txt"
  $PY -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/env.txt"
fi

if has prebuild; then
  # run on the development machine, not the GPU one: basisrt._C for the GPU machine's python
  # (3.12 there), so its call skips the build; carry the .so with the call (it is git-ignored)
  rm -rf /tmp/prebuild && ${PREBUILD_PY:-python3.12} -m pip wheel -q --no-deps -w /tmp/prebuild . \
    && unzip -o -j /tmp/prebuild/basisrt-*.whl 'basisrt/_C.*.so' -d basisrt/ && ls basisrt/_C.*.so
fi

if has build; then
  stage build
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  tag=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
  if [ -f "basisrt/_C$tag" ]; then  # prebuilt: an editable install that compiles nothing
    BASISRT_PREBUILT_EXT=1 $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/build.log" 2>&1
    (cd /tmp && $PY -c "import basisrt._C") 2>>"$OUT/build.log" || rm -f "basisrt/_C$tag"
  fi
  if [ ! -f "basisrt/_C$tag" ]; then
    # built here (the machine's python and compiler, all cores): over two minutes on the H200 machine
    timeout 300 $PY -m pip install --no-index --no-deps --no-build-isolation -e . >>"$OUT/build.log" 2>&1 \
      || { tail -30 "$OUT/build.log"; exit 1; }
  fi
  (cd /tmp && $PY -c "import basisrt._C as c; print('basisrt._C', c.simd_path(), c.__file__)")
  echo "built in $SECONDS s"
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH

if has tests; then
  stage tests
  # the GPU test files and the others that take a GPU path there (-rs lists every skip: on a GPU
  # none of these may skip); SIGINT at the limit still prints pytest's summary of failures
  timeout -s INT ${TESTS_S:-300} $PY -m pytest -q -rfEs -n ${TESTS_N:-14} -p no:cacheprovider $GPU_TESTS \
    tests/test_plan_compat.py tests/test_crashes.py tests/test_plan_tamper.py tests/test_compile.py \
    tests/test_bench_stats.py "tests/test_serve.py::test_cuda_plan_is_served_from_its_gpu" \
    >"$OUT/gputests.log" 2>&1
  tail -25 "$OUT/gputests.log"
fi

if has suite; then
  stage suite
  timeout -s INT ${SUITE_S:-420} $PY -m pytest -q -rfEs -n ${TESTS_N:-14} -p no:cacheprovider >"$OUT/suite.log" 2>&1
  tail -25 "$OUT/suite.log"
fi

if has bench; then
  stage bench
  for m in resnet18 vgg16; do
    timeout -s INT ${BENCH_S:-200} $PY -m basisrt bench --models $m --levels r25 r10 --batches 1 32 --threads 1 --no-layers \
      --no-progress --rounds ${ROUNDS:-15} \
      --engines gpu_eager_dense gpu_eager_pruned gpu_inductor_pruned gpu_basisrt gpu_basisrt_graph \
      --out "$OUT/bench_$m" >"$OUT/bench_$m.log" 2>&1
    echo "bench $m: exit $? ($SECONDS s)"
    grep -A30 "^## GPU" "$OUT/bench_$m/results.md" 2>/dev/null | grep "^|" | head -30
  done
fi

if has micro; then
  stage micro
  timeout 150 $PY bench/gpu_kernel_micro.py --levels r25 --out "$OUT" 2>&1 | tee "$OUT/micro.log" | tail -16
fi

pack
echo "=== done ($SECONDS s)"
