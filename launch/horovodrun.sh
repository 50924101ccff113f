#!/usr/bin/env bash
# Train with horovodrun on one machine or several.
#
#   launch/horovodrun.sh [-np N] [-H host1:4,host2:4] [--gloo|--mpi] [--network-interface IFACE]
#                        DATA.h5 [distributed-h5 train args]
#
#   launch/horovodrun.sh -np 8 data.h5 --epochs 10 --batch-size 8
#   launch/horovodrun.sh -np 8 -H node1:4,node2:4 --mpi data.h5 --epochs 10
#   launch/horovodrun.sh -np 2 -H node1:1,node2:1 --network-interface eth0 data.h5 --epochs 10
#   launch/horovodrun.sh --elastic -np 8 --min-np 4 --max-np 8 data.h5 --epochs 10
#
# --elastic: Horovod's elastic mode (Gloo): ranks may leave and join; hosts come from
# --host-discovery-script (default launch/discover_hosts.sh), and `train --elastic` rolls back
# to the last in-memory commit when a rank is lost.
#
# -np defaults to the cores of this machine. The controller defaults to --gloo on a machine
# without an NVIDIA GPU (Open MPI busy-polls, which took CPU ranks 3x longer) and to
# Horovod's own choice otherwise. --network-interface: the interface the hosts reach each
# other on (also HOROVOD_GLOO_IFACE); without it horovodrun probes every host's interfaces.
# Prints the exact command it runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ranks=$(nproc)
hosts=""
controller=()
interface=""
elastic=()
while (($#)); do
    case $1 in
        -np) ranks=$2; shift 2 ;;
        -H) hosts=$2; shift 2 ;;
        --gloo|--mpi) controller=("$1"); shift ;;
        --network-interface) interface=$2; shift 2 ;;
        --elastic) elastic+=(--elastic); shift ;;
        --min-np|--max-np|--host-discovery-script) elastic+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
        *) break ;;
    esac
done
data=${1:?usage: launch/horovodrun.sh [-np N] [-H hosts] [--gloo|--mpi] [--network-interface IFACE] DATA.h5 [train args]}
shift
per_node=$ranks
if [[ -n $hosts ]]; then
    per_node=${hosts%%,*}
    per_node=${per_node##*:}
fi
# shellcheck source=launch/env.sh
. "$here/env.sh" "$per_node"
if ((${#controller[@]} == 0)) && ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    controller=(--gloo)
fi
command=(horovodrun -np "$ranks")
[[ -n $hosts ]] && command+=(-H "$hosts")
train_flags=()
if ((${#elastic[@]})); then
    if [[ ! " ${elastic[*]} " == *" --elastic "* ]]; then
        echo "launch/horovodrun.sh: error: --min-np, --max-np and --host-discovery-script need --elastic" >&2
        exit 2
    fi
    [[ -n $hosts ]] && { echo "launch/horovodrun.sh: error: --elastic takes its hosts from a discovery script, not -H" >&2; exit 2; }
    controller=(--gloo)  # Horovod's elastic mode runs on Gloo only
    for ((i = 0; i < ${#elastic[@]}; i++)); do
        case ${elastic[i]} in
            --elastic) ;;
            *) command+=("${elastic[i]}" "${elastic[i + 1]}"); i=$((i + 1)) ;;
        esac
    done
    [[ " ${elastic[*]} " == *" --host-discovery-script "* ]] || command+=(--host-discovery-script "$here/discover_hosts.sh")
    train_flags=(--elastic)
fi
command+=("${controller[@]}")
if [[ -n $interface ]]; then
    # Gloo's rendezvous and collectives, and horovodrun's own services, on that interface only.
    export HOROVOD_GLOO_IFACE=$interface
    command+=(--network-interface "$interface")
fi
command+=(distributed-h5 train "$data" "${train_flags[@]}" "$@")
echo "+ DH5_TF_THREADS=$DH5_TF_THREADS ${command[*]}" >&2
exec "${command[@]}"
