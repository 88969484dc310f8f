#!/usr/bin/env bash
# Every accelerator check of the benchmarks in one run, most important first, inside a time budget.
#
#   bash benchmarks/device_suite.sh [BUDGET_SECONDS=510] [OUT_DIR=${OUT:-/tmp/paella_suite}]
#
# Steps (paper config unless SUITE_PRESET says otherwise): numerics against the original's
# fixtures; sampling at batch 1 and 64 in bf16 (the latency and throughput targets); the bf16
# train step at batch 64 (MFU target); Paella v3 sampling in bf16 at batch 1 and 64 (12 steps
# with CFG, the compiled sampler's memory recorded); paella-serve on the tiny model, batching
# against one request per call; the same v1 sampling in fp32; depthwise-conv forms; the typical
# filter; the bf16 batch sweep 8-256 with a per-part breakdown (the Fig. 7 plot); VQGAN; the fp32
# train step. A step starts only with at least 30 s of the budget left and is stopped when the
# budget runs out; every benchmark writes its rows as it goes. After each step the result files
# are packed into OUT_DIR/results.tar.gz (unpack it with `tar xzf ... -C benchmarks`); the log is
# OUT_DIR/suite.log, the target table OUT_DIR/summary.md: three files in all.
#
# With SUITE_ORIGINAL=DIR (the original's modules.py and utils.py, see bench_original.py) and a
# CUDA torch, the original sampler runs on the same GPU under bf16 autocast after the serve step.
# Every step shares one persistent compilation cache ($PAELLA_JAX_CACHE) and prints each
# first call's seconds the moment it returns, so a step cut by the budget still shows its compile.
# Where ml_collections or fastapi is missing (configs/ and paella-serve need them), the wheels in
# .carry/wheels (benchmarks/carry_wheels.sh) are installed first; the fixtures are read from
# SUITE_REFERENCE (default tests/fixtures).
# A dry run on a CPU (what tests/test_benchmarks.py runs):
#   SUITE_PRESET=tiny SUITE_PRESET_V3=tiny_v3 SUITE_VQGAN=vqgan_tiny SUITE_TYPICAL_SHAPES=256x1024 \
#     bash benchmarks/device_suite.sh 300 /tmp/suite
set -u
cd "$(dirname "$0")/.."
budget=${1:-510}
out=${2:-${OUT:-/tmp/paella_suite}}
preset=${SUITE_PRESET:-paella_v1}
preset_v3=${SUITE_PRESET_V3:-paella_v3}
vqgan=${SUITE_VQGAN:-vqgan_sber_f8}
typical_shapes=${SUITE_TYPICAL_SHAPES:-1024x8192,65536x8192}  # rows = images x 1024 tokens
reference=${SUITE_REFERENCE:-tests/fixtures}
python=${PYTHON:-python3}
deadline=$(( $(date +%s) + budget ))
results=$(mktemp -d)/results  # outside OUT_DIR, which gets three files however many steps ran
mkdir -p "$out" "$results"
export PAELLA_BENCH_RESULTS="$results" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# One persistent compilation cache for every step: a program compiled by one step (or by an
# earlier run of the suite on the same machine) is read back by the next instead of compiled.
export PAELLA_JAX_CACHE=${PAELLA_JAX_CACHE:-/tmp/paella_suite_xla_cache}
log="$out/suite.log"

if ! "$python" -c "import ml_collections, fastapi, uvicorn" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/paella_site \
    .carry/wheels/*.whl || echo "could not install .carry/wheels/*.whl"
  export PYTHONPATH=/tmp/paella_site${PYTHONPATH:+:$PYTHONPATH}
fi
"$python" -c "import ml_collections" 2>/dev/null || { echo "ml_collections missing"; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"; } | tee "$log"

step() {  # step NAME SCRIPT ARGS...: runs benchmarks/SCRIPT within the time left
  local name=$1 script=$2 left
  shift 2
  left=$(( deadline - $(date +%s) ))
  if (( left < 30 )); then
    echo "== $name: skipped, ${left} s of the budget left" | tee -a "$log"
    return
  fi
  echo "== $name ($(date -u +%H:%M:%S), ${left} s left)" | tee -a "$log"
  local start=$(date +%s)
  timeout "$left" "$python" "benchmarks/$script" "$@" 2>&1 | grep --line-buffered -v "^wrote " \
    | tee -a "$log"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $(( $(date +%s) - start )) s" | tee -a "$log"
  tar czf "$out/results.tar.gz" -C "$(dirname "$results")" results
}

step numerics check_numerics.py --reference "$reference"
step "sampling bf16, batch 1 and 64" bench_sampling.py --config "$preset" --dtype bfloat16 \
  --batch-sizes 1,64 --repeats 3
step "train bf16, batch 64" bench_train.py --config "$preset" --dtype bfloat16 --batch-sizes 64 \
  --steps 5 --repeats 3
step "v3 sampling bf16, batch 1 and 64" bench_sampling.py --config "$preset_v3" --dtype bfloat16 \
  --batch-sizes 1,64 --repeats 3 --memory
step "serve, tiny model, 16 clients" bench_serve.py --clients 16 --requests 16
if [ -n "${SUITE_ORIGINAL:-}" ] && "$python" -c "import torch; assert torch.cuda.is_available()" \
    2>/dev/null; then  # the original PyTorch sampler on the same GPU, paper v1, bf16 autocast
  for b in 1 64; do
    step "original vs jit, cuda bf16, batch $b" bench_original.py --original "$SUITE_ORIGINAL" \
      --device cuda --precision bf16 --codes 8192 --c-hidden 1280 --latent 32 --batch "$b" \
      --repeats 3 --torch-threads 1 --name "original_vs_jit_cuda_bf16_b$b"
  done
fi
step "sampling fp32, batch 1 and 64" bench_sampling.py --config "$preset" --dtype float32 \
  --batch-sizes 1,64 --repeats 3
step "depthwise conv forms, bf16" bench_depthwise.py --config "$preset" --dtype bfloat16 --batch 128
step "typical filter" bench_typical.py --shapes "$typical_shapes" --repeats 5
step "sampling bf16 sweep + breakdown" bench_sampling.py --config "$preset" --dtype bfloat16 \
  --batch-sizes 8,16,32,128,256 --repeats 3 --breakdown 64 --name "sampling_${preset}_bfloat16_sweep"
step "vqgan bf16" bench_vqgan.py --config "$vqgan" --dtype bfloat16 --batch-sizes 1,8,64 --repeats 3
step "train fp32, batch 64" bench_train.py --config "$preset" --dtype float32 --batch-sizes 64 \
  --steps 5 --repeats 3
step "vqgan fp32" bench_vqgan.py --config "$vqgan" --dtype float32 --batch-sizes 1,8,64 --repeats 3

backend=$("$python" -c "import jax; print(jax.default_backend())")
"$python" benchmarks/summary.py --backend "$backend" --results "$results" --preset "$preset" \
  | tee "$out/summary.md"
