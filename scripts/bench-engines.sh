#!/usr/bin/env bash
# The two engines side by side: `distributed-h5 train` with the video model on the same file,
# Horovod (horovodrun --gloo, one TensorFlow thread per rank) against JAX (mpirun, each
# process bound to one core: XLA's CPU runtime takes about 1.5 cores unbound, whatever
# XLA_FLAGS say), on 1 and 2 ranks of batch 8, 3 epochs; the last epoch's samples/s (after
# compilation) and data_wait_fraction from each run's summary line. Then the reference: plain
# Keras `model.fit` on in-memory arrays, one core, each backend, without distributed_h5.
# Writes bench-results/engines.txt. CPU figures: they compare the engines on this machine,
# not on a GPU.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH=$root/.venv/bin:$PATH HDF5_USE_FILE_LOCKING=FALSE PYTHONUNBUFFERED=1
data=data/bench/engines.h5
results=bench-results
mkdir -p "$results" "$(dirname "$data")"
if [[ ! -f $data ]]; then
    distributed-h5 make-synthetic "$data" --samples 1024 --frames 16 --size 32 32 --classes 4
fi
train=(distributed-h5 train "$data" --epochs 3 --batch-size 8 --validation-ratio 0.1 --width 16 --depth 3
       --verbose 0 --warmup-epochs 0)
mpi=(mpirun --bind-to core --map-by core -x PATH -x HDF5_USE_FILE_LOCKING -x PYTHONUNBUFFERED)
(( $(id -u) == 0 )) && mpi+=(--allow-run-as-root)
{
    printf '%-8s %5s %14s %18s\n' engine ranks samples/s data_wait_fraction
    for ranks in 1 2; do
        for engine in horovod jax; do
            if [[ $engine == horovod ]]; then
                command=(horovodrun -np "$ranks" --gloo "${train[@]}" --tf-threads 1)
            else
                command=("${mpi[@]}" -np "$ranks" "${train[@]}" --engine jax)
            fi
            echo "+ ${command[*]}" >&2
            summary=$("${command[@]}" 2>/dev/null | grep -o 'summary: .*' | tail -1)
            sps=$(grep -o 'samples_per_second=[^ ]*' <<<"$summary" | cut -d= -f2)
            wait=$(grep -o 'data_wait_fraction=[^ ]*' <<<"$summary" | cut -d= -f2)
            printf '%-8s %5s %14s %18s\n' "$engine" "$ranks" "$sps" "$wait"
        done
    done
    echo "reference: plain Keras model.fit, 400 clips of 16x3x32x32 in memory, batch 8, one core (taskset -c 0)"
    for backend in tensorflow jax; do
        KERAS_BACKEND=$backend taskset -c 0 python - 2>/dev/null <<'PY'
import time

import keras
import numpy as np

from distributed_h5.models import video_classifier

model = video_classifier((16, 3, 32, 32), 4, width=16, depth=3, dtype="uint8", seed=0)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
rng = np.random.default_rng(0)
x = rng.integers(0, 255, (400, 16, 3, 32, 32), dtype=np.uint8)
y = np.eye(4, dtype="float32")[rng.integers(0, 4, 400)]
model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)  # compile
start = time.perf_counter()
model.fit(x, y, batch_size=8, epochs=1, verbose=0)
print(f"{keras.backend.backend():<10} {400 / (time.perf_counter() - start):8.1f} samples/s")
PY
    done
} | tee "$results/engines.txt"
