# shellcheck shell=bash
# Sourced by the launch scripts: the environment every rank of a multi-process run needs.
# Usage: . launch/env.sh RANKS_PER_NODE [CPUS_PER_RANK]

dh5_ranks_per_node=${1:-1}
# TensorFlow threads per rank: the cores each rank owns, so ranks sharing a node do not
# oversubscribe it (one thread each when there are as many ranks as cores).
dh5_cpus=${2:-$(( $(nproc) / dh5_ranks_per_node ))}
(( dh5_cpus >= 1 )) || dh5_cpus=1
export DH5_TF_THREADS=${DH5_TF_THREADS:-$dh5_cpus}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$DH5_TF_THREADS}
# HDF5 file locking fails on many parallel file systems, and training never writes the data.
export HDF5_USE_FILE_LOCKING=FALSE
# distributed-h5 itself quiets TensorFlow's C++ logs on ranks other than 0.
export PYTHONUNBUFFERED=1
