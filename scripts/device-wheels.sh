#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for the JAX engine and the reader, into .whl/ (git-ignored):
# cp312 manylinux wheels of keras (the version this checkout's install resolved) and of those of
# its and this package's runtime needs that the machine's image does not hold, one version
# each, plus a wheel of this package. scripts/device-bench.sh installs them there.
#
#   scripts/device-wheels.sh        then: a device run with carry [".whl"] (README, Benchmarks)
#
# Environment:
#   DH5_WHEELS          where the wheels go                      (default: <checkout>/.whl)
#   DH5_KERAS_VERSION   the keras to carry (default: the one in .venv, else 3.15.1)
#   DH5_WHEELS_MAX_MB   fail above this total                    (default: 60; a device call carries 64 MiB)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
wheels=${DH5_WHEELS:-$root/.whl}
max_mb=${DH5_WHEELS_MAX_MB:-60}
py=$root/.venv/bin/python
[[ -x $py ]] || py=python3

log() { printf '[device-wheels] %s\n' "$*" >&2; }

installed() {  # NAME DEFAULT: the version in this checkout's environment, else DEFAULT
    "$py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || echo "$2"
}

# The image's Python packages (the device's KINDS.md, read 2026-11-17): keras, namex and optree
# are not among them; h5py, numpy, tqdm and tensorboard (this package's other needs) and absl-py,
# rich, ml-dtypes, packaging and typing-extensions (keras' and optree's) are. The check at the
# end fails if a carried wheel needs something that is neither carried nor in this list.
image="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

carried=("keras==${DH5_KERAS_VERSION:-$(installed keras 3.15.1)}"
         "namex==$(installed namex 0.1.0)"
         "optree==$(installed optree 0.20.0)")

rm -rf "$wheels"
mkdir -p "$wheels"
log "pip download ${carried[*]}"
# The platform tags the device README names: optree's wheel is tagged manylinux_2_27/2_28 only.
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$wheels" "${carried[@]}"
log "pip wheel --no-deps $root"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# Built from a copy, so the build leaves nothing behind in the checkout (build/, egg-info).
tar -C "$root" --exclude=./.venv --exclude=./.whl --exclude=./.git --exclude=./data --exclude=./runs \
    --exclude=./bench-results --exclude='*.egg-info' -cf - . | tar -C "$build" -xf -
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$wheels" "$build" 2>/dev/null \
    || "$py" -m pip wheel -q --no-deps -w "$wheels" "$build"

# Every carried wheel's needs (extras left out) must be carried or in the image; one version each.
"$py" - "$wheels" "$image" <<'PY'
import re
import sys
import zipfile
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

folder, image = Path(sys.argv[1]), {norm(n) for n in sys.argv[2].split()}
files = sorted(folder.glob("*.whl"))
names = [norm(f.name.split("-")[0]) for f in files]
doubles = sorted({n for n in names if names.count(n) > 1})
if doubles:
    raise SystemExit(f"device-wheels: more than one version of {', '.join(doubles)} in {folder}")
missing = {}
for path in files:
    with zipfile.ZipFile(path) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        for line in wheel.read(metadata).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                need = norm(re.match(r"[A-Za-z0-9_.-]+", line.split(":", 1)[1].strip()).group(0))
                if need not in image and need not in names:
                    missing.setdefault(need, []).append(path.name)
if missing:
    raise SystemExit("device-wheels: needed but neither carried nor in the device image: "
                     + "; ".join(f"{n} (by {', '.join(by)})" for n, by in sorted(missing.items())))
PY

total=$(du -cb "$wheels"/*.whl | tail -1 | cut -f1)
ls -1 "$wheels"
printf 'device-wheels: %d wheels, %.1f MiB in %s\n' "$(find "$wheels" -type f -name '*.whl' | wc -l)" \
    "$(awk -v b="$total" 'BEGIN {print b / 1048576}')" "$wheels"
if ((total > max_mb * 1048576)); then
    log "ERROR: the wheels total more than $max_mb MiB; a device call carries 64 MiB in all"
    exit 1
fi
