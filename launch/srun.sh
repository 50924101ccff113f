#!/usr/bin/env bash
# Train with srun --mpi=pmix, one rank per task, inside a SLURM allocation (sbatch or salloc).
#
#   launch/srun.sh DATA.h5 [distributed-h5 train args]
#
# Ranks come from the allocation (--ntasks, --nodes, --ntasks-per-node); TensorFlow threads
# per rank from --cpus-per-task. Prints the exact command it runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SLURM_JOB_ID:?launch/srun.sh runs inside a SLURM allocation (sbatch or salloc)}"
data=${1:?usage: launch/srun.sh DATA.h5 [train args]}
shift
# shellcheck source=launch/env.sh
. "$here/env.sh" "${SLURM_NTASKS_PER_NODE:-1}" "${SLURM_CPUS_PER_TASK:-1}"
# pmix: Debian's Open MPI works with it, not with pmi2. --kill-on-bad-exit: a rank that
# dies ends the step at once instead of leaving the others blocked in allreduce.
command=(srun --mpi=pmix --kill-on-bad-exit=1 distributed-h5 train "$data" "$@")
echo "+ DH5_TF_THREADS=$DH5_TF_THREADS ${command[*]}" >&2
exec "${command[@]}"
