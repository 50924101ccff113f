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
# Prints the exact command it runs. Exits 0 only when training finished; sent TERM, INT or HUP,
# it stops horovodrun and every rank and exits 128 + the signal (143 for SIGTERM).
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

# horovodrun's exit status alone does not prove that training finished (it has been seen to
# exit 0 after SIGTERM), and under --mpi horovodrun becomes `sh -c mpirun ...`, which SIGTERM
# kills alone, leaving mpirun and the ranks running. So horovodrun runs here as a child in a
# process group of its own: TERM, INT or HUP sent to this script (Ctrl-C, scancel, a time
# limit) goes to that group, whatever the group still holds once horovodrun has ended is
# stopped, and the run counts as finished only when rank 0 has printed its `summary:` line.
work=$(mktemp -d "${TMPDIR:-/tmp}/dh5-horovodrun.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkfifo "$work/stdout"
# The watcher passes horovodrun's output through and ignores those signals, so that what
# horovodrun prints while it stops still gets through.
(trap '' TERM INT HUP; exec awk -v finished="$work/finished" '{ print; fflush() }
    /(^|<stdout>:)summary: / { printf "" > finished }' <"$work/stdout") &
watcher=$!
set -m  # the next background job gets a process group of its own
"${command[@]}" >"$work/stdout" &
runner=$!
set +m
stopped_by=""
# shellcheck disable=SC2317  # run by the traps below
stop() {
    stopped_by=$1
    kill -s "$1" -- "-$runner" 2>/dev/null || true
}
trap 'stop TERM' TERM
trap 'stop INT' INT
trap 'stop HUP' HUP
# A trapped signal ends `wait` early; wait again until horovodrun itself has ended.
until wait "$runner"; status=$?; ! kill -0 "$runner" 2>/dev/null; do :; done
# What horovodrun's process group still holds a moment after it ended (mpirun, when the shell
# that horovodrun --mpi became was killed) is stopped: TERM, then KILL 30 s later.
for attempt in {1..64}; do
    kill -0 -- "-$runner" 2>/dev/null || break
    if ((attempt == 4)); then
        echo "launch/horovodrun.sh: stopping what horovodrun left running" >&2
        kill -TERM -- "-$runner" 2>/dev/null || true
    fi
    sleep 0.5
done
kill -KILL -- "-$runner" 2>/dev/null || true
wait "$watcher" || true
if [[ -f $work/finished ]] && ((status == 0)); then
    exit 0
fi
if [[ -n $stopped_by ]]; then
    echo "launch/horovodrun.sh: stopped by SIG$stopped_by before training finished" >&2
    exit $((128 + $(kill -l "$stopped_by")))
fi
if ((status == 0)); then
    echo "launch/horovodrun.sh: error: horovodrun exited 0 but rank 0 printed no summary line:" \
        "training did not finish" >&2
    status=1
fi
exit "$status"
