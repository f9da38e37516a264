#!/usr/bin/env bash
# The GPU benchmark in one command, on a machine with a CUDA build of torch and no network:
# the device equivalence tests, the two GPU targets (FEMNIST CNN at 1024 nodes; 1024 nodes on
# CIFAR-sized inputs), throughput of the four models at 16 to 256 nodes, vmap against loop.
# Each configuration gets at most 150 s; the whole is meant to take under 8 minutes.
#
#   benchmarks/gpu.sh fetch   # first, where the package index is reachable: the wheels of the
#                             # dependencies a CUDA machine's Python may lack, into benchmarks/.wheels
#   benchmarks/gpu.sh         # there, with benchmarks/.wheels copied along; PYTHON picks the interpreter
#
# meshlearn itself runs from src/ with that machine's own torch (its pin would pull a CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=benchmarks/.wheels
# imported by meshlearn and often missing beside a CUDA torch; the versions the project is tested with
NEEDS="pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
typing_extensions==4.16.0 tomli_w==1.2.0 zstandard==0.25.0 lz4==4.4.5 pyzmq==27.3.0 cryptography==50.0.2
cffi==2.1.1 pycparser==3.12 PyWavelets==1.9.0 fpzip==1.2.5"

if [ "${1:-}" = fetch ]; then
  version=${GPU_PYTHON_VERSION:-3.12}   # the GPU machine's Python
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" $NEEDS
  echo "wheels for Python $version in $WHEELS ($(du -sh "$WHEELS" | cut -f1)): copy that folder along"
  exit 0
fi

if ! "$PY" -c "import pydantic, zmq, zstandard, lz4, tomli_w, pywt, cryptography" 2>/dev/null; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "missing packages and no $WHEELS: run '$0 fetch' where pip can download"; exit 2; }
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'this torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== CUDA against CPU (tests/test_device.py)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_device.py
bench() { "$PY" benchmarks/throughput.py --device cuda --engines sim --timeout 150 "$@"; }
echo "== the targets: FEMNIST CNN at 1024 nodes; 1024 nodes on CIFAR-sized inputs (3×32×32)"
bench --models femnist_cnn --nodes 1024
bench --models lenet,resnet --nodes 1024 --shape 3,32,32
echo "== throughput of the four models"
bench --models logreg,mlp,lenet,femnist_cnn --nodes 16,64,256
echo "== vmap against node by node: FEMNIST CNN at 256 nodes with loop batching"
bench --models femnist_cnn --nodes 256 --batching loop
