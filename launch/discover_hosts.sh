#!/usr/bin/env bash
# Host discovery for elastic training (horovodrun --host-discovery-script): print one
# "host:slots" line per host that may run ranks now. horovodrun runs it every few seconds;
# a host that disappears from the list loses its ranks, and one that appears gains them.
#
#   DH5_HOSTS_FILE=hosts.txt launch/horovodrun.sh --elastic --min-np 4 --max-np 8 data.h5 --epochs 90
#
# Sources, first found: $DH5_HOSTS_FILE (lines of "host:slots", kept up to date by whatever
# manages the machines: an autoscaler, a spot-instance watcher, you); the SLURM allocation
# this runs in (slots: $SLURM_NTASKS_PER_NODE, else 1); this machine alone.
set -euo pipefail
if [[ -n ${DH5_HOSTS_FILE:-} ]]; then
    grep -v '^[[:space:]]*\(#\|$\)' "$DH5_HOSTS_FILE" || true
elif [[ -n ${SLURM_JOB_NODELIST:-} ]]; then
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/:${SLURM_NTASKS_PER_NODE:-1}/"
else
    echo "localhost:$(nproc)"
fi
