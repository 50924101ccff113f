#!/usr/bin/env bash
# Install the real stack into .venv. Idempotent: re-running only does what is missing.
#
#   scripts/install.sh          runtime: Open MPI, TensorFlow, JAX, Keras 3, h5py, mpi4py, Horovod
#   scripts/install.sh --test   also what the tests need: pytest, hypothesis, shellcheck,
#                               and a one-node SLURM (slurmctld, slurmd, munge)
#
# Environment:
#   DH5_VENV        virtual environment to use            (default: <checkout>/.venv)
#   DH5_CACHE_DIR   where the built Horovod wheel is kept (default: ~/.cache/distributed_h5)
#   DH5_TF_SPEC     TensorFlow requirement                (default: tensorflow-cpu==2.21.*,
#                   or tensorflow[and-cuda]==2.21.* when nvidia-smi finds a GPU)
#   DH5_JAX_SPEC    JAX requirement, for the jax engine   (default: jax==0.10.*,
#                   or jax[cuda12|cuda13]==0.10.* by the CUDA version nvidia-smi reports)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DH5_VENV:-$root/.venv}
cache=${DH5_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/distributed_h5}
horovod_version=0.28.1
with_test=0
[[ ${1:-} == --test ]] && with_test=1

log() { printf '[install] %s\n' "$*" >&2; }

# --- System packages (Debian/Ubuntu) -------------------------------------------------
system_packages=(openmpi-bin libopenmpi-dev cmake)
if ((with_test)); then
    # A real SLURM for tests/slurm, PMIx for `srun --mpi=pmix`, shellcheck for launch/ and slurm/;
    # iproute2 and an sshd for the multi-node test cluster (one network namespace and sshd per node).
    system_packages+=(slurmctld slurmd slurm-client munge libpmix2 shellcheck iproute2 openssh-server openssh-client)
fi
missing=()
for package in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing system packages: ${missing[*]}"
        log "install them as root (apt-get install ${missing[*]}) or load your cluster's MPI module"
        exit 1
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python environment ---------------------------------------------------------------
if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv"
    python3 -m venv "$venv"
fi
py=$venv/bin/python

if [[ -z ${DH5_TF_SPEC:-} ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        DH5_TF_SPEC='tensorflow[and-cuda]==2.21.*'
    else
        DH5_TF_SPEC='tensorflow-cpu==2.21.*'
    fi
fi
# Both engines in one environment, so switching is one variable (DH5_ENGINE=jax); they share
# numpy and ml_dtypes, and pip resolves both together.
if [[ -z ${DH5_JAX_SPEC:-} ]]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        # The CUDA major version the driver supports picks JAX's CUDA wheels (13 needs a 580+ driver).
        cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
        if [[ ${cuda:-0} -ge 13 ]]; then
            DH5_JAX_SPEC='jax[cuda13]==0.10.*'
        else
            DH5_JAX_SPEC='jax[cuda12]==0.10.*'
        fi
    else
        DH5_JAX_SPEC='jax==0.10.*'
    fi
fi
extras=mpi,bench,video
((with_test)) && extras+=,test
# Re-run pip only when the requirements changed: a warm install then costs well under a second.
# A test install also satisfies a plain one.
stamp=$venv/.dh5-installed
key="$DH5_TF_SPEC $DH5_JAX_SPEC $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
want="$key [$extras]"
have=$(cat "$stamp" 2>/dev/null || true)
if [[ $have != "$want" && $have != "$key [$extras,test]" ]]; then
    log "pip install $DH5_TF_SPEC $DH5_JAX_SPEC and distributed_h5[$extras]"
    "$py" -m pip install -q --upgrade pip setuptools wheel
    "$py" -m pip install -q "$DH5_TF_SPEC" "$DH5_JAX_SPEC" -e "${root}[$extras]"
    echo "$want" >"$stamp"
fi

# --- Horovod, built from source with TensorFlow, MPI and Gloo ----------------------
# A Horovod that imports with TensorFlow and a controller is used as is (a site's build, with
# NCCL, say); the tests need both controllers, MPI and Gloo.
horovod_ok() {
    "$py" - "$with_test" <<'PY' 2>/dev/null
import sys
import horovod.tensorflow as hvd
controllers = [hvd.mpi_built(), hvd.gloo_built()]
raise SystemExit(0 if (all(controllers) if sys.argv[1] == "1" else any(controllers)) else 1)
PY
}
if horovod_ok; then
    exit 0
fi
tf_version=$("$py" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
py_tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
wheel_dir=$cache/wheels/horovod-$horovod_version-tf$tf_version-$py_tag
if ! compgen -G "$wheel_dir/horovod-*.whl" >/dev/null; then
    log "building Horovod $horovod_version against TensorFlow $tf_version (about 4 minutes on 2 cores)"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$build" "horovod==$horovod_version"
    tar -xzf "$build"/horovod-"$horovod_version".tar.gz -C "$build"
    src=$build/horovod-$horovod_version
    # Horovod 0.28.1 does not compile against TensorFlow >= 2.16 as published: xla_mpi_ops.cc
    # includes highwayhash and farmhash headers the TF wheel no longer ships. Dropping that one
    # source only removes XLA-compiled collectives; eager and tf.function allreduce are unaffected.
    cmake_file=$src/horovod/tensorflow/CMakeLists.txt
    # shellcheck disable=SC2016  # the CMake line, matched literally
    xla_line='list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")'
    if [[ $(grep -cFx "$xla_line" "$cmake_file") != 1 ]]; then
        log "ERROR: $cmake_file no longer has the line the patch removes; review the patch in $0:"
        log "  $xla_line"
        exit 1
    fi
    grep -vFx "$xla_line" "$cmake_file" >"$cmake_file.patched"
    mv "$cmake_file.patched" "$cmake_file"
    mkdir -p "$wheel_dir"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1 \
        HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
        MAKEFLAGS="-j$(nproc)" \
        "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$wheel_dir" "$src"
fi
log "installing Horovod from $wheel_dir"
"$py" -m pip install -q --force-reinstall --no-deps "$wheel_dir"/horovod-*.whl
"$py" -m pip install -q cloudpickle psutil pyyaml packaging
horovod_ok || { log "ERROR: Horovod installed but lacks TensorFlow/MPI/Gloo support"; exit 1; }
# --check-build imports TensorFlow in five processes; their start-up banners say nothing here.
log "Horovod $horovod_version ready: $("$venv/bin/horovodrun" --check-build 2>/dev/null | tr -s '\n' ' ')"
