#!/usr/bin/env bash
# One prepared measurement for a lent GPU machine (issue 23): distributed_h5's train_model on the
# JAX engine (r2plus1d_18 and video_classifier, float32 and mixed_bfloat16, batch 8/16/32, warm
# and cold page cache), torchvision's r2plus1d_18 on a torch DataLoader, and bench au's emulated
# accelerators at the measured step. Writes $OUT/device-bench.json and $OUT/device-bench.md.
#
#   scripts/device-bench.sh         on the GPU machine, about 7 minutes (bounded at 440 s); first
#                                   install the wheels of .whl/ (scripts/device-wheels.sh, run
#                                   where pip works) into a temporary site directory
#   scripts/device-bench.sh --cpu   the same code on this machine's CPU, tiny file and models, about
#                                   a minute; this environment's packages (tests/unit/test_device_bench.py)
#
# Further arguments go to `python -m distributed_h5.bench.device` (--data DIR, --parts, --deadline S).
# Environment:
#   OUT          where the results go              (default: bench-results/device)
#   DH5_WHEELS   the wheels to install             (default: <checkout>/.whl)
#   DH5_PYTHON   the Python to run                 (default: .venv/bin/python if there, else python3)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode=gpu
if [[ ${1:-} == --cpu ]]; then
    mode=cpu
    shift
fi
out=${OUT:-$root/bench-results/device}
wheels=${DH5_WHEELS:-$root/.whl}
py=${DH5_PYTHON:-}
if [[ -z $py ]]; then
    py=python3
    [[ -x $root/.venv/bin/python ]] && py=$root/.venv/bin/python
fi

# The wheels are cp312 (the GPU machine's Python); another Python runs on what it has.
cp312=$("$py" -c 'import sys; print(int(sys.version_info[:2] == (3, 12)))')
if compgen -G "$wheels/*.whl" >/dev/null && ((cp312)); then
    site=$(mktemp -d "${TMPDIR:-/tmp}/dh5-site.XXXXXX")
    trap 'rm -rf "$site"' EXIT
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    echo "device-bench: installed $(find "$wheels" -type f -name '*.whl' | wc -l) wheels into $site"
elif [[ $mode == gpu ]] && ! "$py" -c 'import keras' 2>/dev/null; then
    echo "device-bench: no keras here and no cp312 wheels in $wheels: run scripts/device-wheels.sh where pip" \
         "works and carry .whl" >&2
    exit 2
fi

# KERAS_BACKEND before Keras is imported: the JAX engine; the rest the workers set themselves.
export KERAS_BACKEND=jax HDF5_USE_FILE_LOCKING=FALSE PYTHONUNBUFFERED=1
mkdir -p "$out"
"$py" -m distributed_h5.bench.device --mode "$mode" --out "$out" "$@"
