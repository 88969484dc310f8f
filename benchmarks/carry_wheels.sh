#!/usr/bin/env bash
# Downloads into .carry/wheels (git-ignored) the wheels device_suite.sh installs on an accelerator
# machine that has JAX, Flax and PIL but no package index: ml_collections (configs/) and the HTTP
# stack of paella-serve (bench_serve.py), built for that machine's Python.
#
#   bash benchmarks/carry_wheels.sh [PYTHON_VERSION=3.12]
set -eu
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${1:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .carry/wheels \
  ml_collections fastapi starlette pydantic pydantic-core annotated-types typing-inspection \
  typing-extensions opentelemetry-api uvicorn
ls .carry/wheels
