#!/usr/bin/env bash
# Train with Open MPI's mpirun (on a workstation, or inside an allocation), with either engine:
# DH5_ENGINE=jax for Keras on JAX, else Horovod.
#
#   launch/mpirun.sh [-np N] DATA.h5 [distributed-h5 train args]
#
# -np defaults to SLURM_NTASKS inside an allocation, else the cores of this machine.
# Prints the exact command it runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ranks=${SLURM_NTASKS:-$(nproc)}
if [[ ${1:-} == -np ]]; then
    ranks=$2
    shift 2
fi
data=${1:?usage: launch/mpirun.sh [-np N] DATA.h5 [train args]}
shift
# shellcheck source=launch/env.sh
. "$here/env.sh" "${SLURM_NTASKS_PER_NODE:-$ranks}" "${SLURM_CPUS_PER_TASK:-}"
command=(mpirun -np "$ranks" --bind-to none --map-by slot)
# Open MPI refuses to run as root unless told; containers and test clusters often are root.
(( $(id -u) == 0 )) && command+=(--allow-run-as-root)
for variable in DH5_TF_THREADS OMP_NUM_THREADS HDF5_USE_FILE_LOCKING PYTHONUNBUFFERED PATH LD_LIBRARY_PATH; do
    command+=(-x "$variable")
done
# The engine (DH5_ENGINE=jax: Keras on JAX) and its settings, where set.
for variable in DH5_ENGINE KERAS_BACKEND XLA_FLAGS; do
    [[ -n ${!variable:-} ]] && command+=(-x "$variable")
done
command+=(distributed-h5 train "$data" "$@")
echo "+ ${command[*]}" >&2
exec "${command[@]}"
