#!/usr/bin/env bash
# Start or stop a SLURM test cluster on this machine (as root, from Debian's packages).
#
#   tests/slurm/cluster.sh start DIR [--nodes N] [--ssh]
#                                                  N = 1 (default) to 4; prints export SLURM_CONF=...
#   tests/slurm/cluster.sh stop DIR                stop what `start DIR` started, remove its network
#   tests/slurm/cluster.sh link DIR NAME down|up   cut node NAME off the network, or reconnect it
#
# --nodes 1: one node, this machine under its own hostname, in this machine's network.
# --nodes 2..4: hosts node1..nodeN, each a network namespace with its own address on a bridge
#   made here (10.199.X.0/24: the controller on .1, nodeK on .1K; no route leaves it), its own
#   hostname (UTS namespace) and a private mount namespace in which DIR/scratch is that node's
#   own folder (DIR/nodes/nodeK/scratch): TMPDIR in every task, the node-local disk. Every
#   other path is shared, as a cluster shares its parallel file system.
# --ssh: also an sshd in each node, listening only on its address, with keys made here for
#   root (DIR/ssh/); `ssh node2` works from inside the nodes, as horovodrun needs.
# Each cluster runs its own munged (socket DIR/munge.socket, key DIR/munge.key) and slurmctld;
# each node its own slurmd (logs in DIR/nodes/NAME/). `stop` ends exactly those processes,
# by the PIDs recorded at start, and the processes left in the cluster's namespaces.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="usage: cluster.sh start DIR [--nodes N] [--ssh] | stop DIR | link DIR NAME down|up"
action=${1:?$usage}
dir=${2:?$usage}
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)

# Runs inside a node's namespaces (network from `ip netns exec`, UTS and mount from unshare):
# name the host, give it its own scratch folder and hosts file, become its slurmd.
if [[ $action == node ]]; then
    name=${3:?}
    hostname "$name"
    mount --bind "$dir/nodes/$name/scratch" "$dir/scratch"
    mount --bind "$dir/hosts" /etc/hosts
    if [[ -f $dir/ssh/ssh_config ]]; then
        # `ssh nodeK` works from any node with the cluster's key, and leaves ~/.ssh alone.
        mount --bind "$dir/ssh/ssh_config" /etc/ssh/ssh_config
        /usr/sbin/sshd -D -f "$dir/nodes/$name/sshd_config" -E "$dir/nodes/$name/sshd.log" </dev/null &
        echo $! >"$dir/nodes/$name/sshd.started.pid"
    fi
    exec /usr/sbin/slurmd -D -N "$name" -f "$dir/slurm.conf"
fi

# The PIDs in DIR/*.pid and DIR/nodes/*/started.pid were started by `start DIR`.
stop_pid() {  # TERM, up to 10 s, then KILL
    local pid=$1
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    local file namespace pid
    for file in "$dir"/nodes/*/started.pid "$dir"/nodes/*/sshd.started.pid "$dir/slurmctld.started.pid" \
        "$dir/munged.started.pid"; do
        [[ -f $file ]] || continue
        stop_pid "$(cat "$file")"
        rm -f "$file"
    done
    if [[ -f $dir/network ]]; then
        # Job steps outlive slurmd; everything still in a node's namespace was started there by it.
        while read -r kind name; do
            case $kind in
                namespace)
                    for pid in $(ip netns pids "$name" 2>/dev/null); do
                        kill -KILL "$pid" 2>/dev/null || true
                    done
                    ip netns del "$name" 2>/dev/null || true ;;
                # Deleted now rather than when the kernel gets round to the namespace's end.
                veth) ip link del "$name" 2>/dev/null || true ;;
            esac
        done <"$dir/network"
        ip link del "$(sed -n 's/^bridge //p' "$dir/network")" 2>/dev/null || true
        rm -f "$dir/network"
    fi
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi
if [[ $action == link ]]; then
    # The host side of the node's cable: down, and nothing reaches the node or leaves it (no reset
    # either), as when a node's network or power fails.
    name=${3:?$usage}
    bridge=$(sed -n 's/^bridge //p' "$dir/network")
    ip link set "dh5v${bridge#dh5br}n${name#node}" "${4:?$usage}"
    exit 0
fi
[[ $action == start ]] || { echo "$usage" >&2; exit 2; }
nodes=1
ssh=0
shift 2
while (($#)); do
    case $1 in
        --nodes) nodes=${2:?$usage}; shift 2 ;;
        --ssh) ssh=1; shift ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
if ((ssh)) && { ((nodes == 1)) || [[ ! -x /usr/sbin/sshd ]]; }; then
    echo "cluster.sh: --ssh needs --nodes 2 to 4 and /usr/sbin/sshd (apt-get install openssh-server)" >&2
    exit 2
fi
if ! [[ $nodes =~ ^[1-4]$ ]]; then
    echo "cluster.sh: --nodes must be 1 to 4. Received: $nodes" >&2
    exit 2
fi

fail() {
    echo "cluster.sh: $1; the logs in $dir say why:" >&2
    tail -n 20 "$dir/munged.log" "$dir/slurmctld.log" "$dir"/nodes/*/slurmd.log "$dir"/nodes/*/stdout >&2 2>/dev/null || true
    stop
    exit 1
}
trap 'fail "start failed at line $LINENO"' ERR

mkdir -p "$dir/state" "$dir/scratch"
mungekey --create --force --keyfile "$dir/munge.key"
chmod 400 "$dir/munge.key"
setsid /usr/sbin/munged --foreground --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" \
    </dev/null >/dev/null 2>&1 &
echo $! >"$dir/munged.started.pid"
for _ in $(seq 50); do
    munge --socket="$dir/munge.socket" --no-input >/dev/null 2>&1 && break
    sleep 0.2
done
munge --socket="$dir/munge.socket" --no-input >/dev/null 2>&1 || fail "munged did not start"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
cpus=$(nproc)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
host=$(hostname -s)
names=()
if ((nodes == 1)); then
    names=("$host")
    ctld_host=$host
    node_lines="NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN"
else
    # A /24 that no interface here uses yet; creating the bridge claims it (another start
    # racing for the same one fails to create it and takes the next).
    bridge=""
    for subnet in $(seq 100 199); do
        ip -4 -o addr show | grep -q " 10\.199\.$subnet\." && continue
        ip link add "dh5br$subnet" type bridge 2>/dev/null || continue
        bridge=dh5br$subnet
        break
    done
    [[ -n $bridge ]] || fail "no free bridge dh5br100..dh5br199"
    prefix=10.199.$subnet
    echo "bridge $bridge" >"$dir/network"
    ip addr add "$prefix.1/24" dev "$bridge"
    ip link set "$bridge" up
    ctld_host="$host($prefix.1)"
    printf '127.0.0.1 localhost\n%s %s\n' "$prefix.1" "$host" >"$dir/hosts"
    node_lines=""
    if ((ssh)); then
        # One key pair for the cluster's root and one host key for every node, made here.
        mkdir -p "$dir/ssh" /run/sshd
        ssh-keygen -q -t ed25519 -N "" -C "dh5 test cluster" -f "$dir/ssh/id_ed25519"
        ssh-keygen -q -t ed25519 -N "" -C "dh5 test cluster host" -f "$dir/ssh/host_ed25519"
        cp "$dir/ssh/id_ed25519.pub" "$dir/ssh/authorized_keys"
        printf 'Host node*\n  IdentityFile %s\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n' \
            "$dir/ssh/id_ed25519" "$dir/ssh/known_hosts" >"$dir/ssh/ssh_config"
        : >"$dir/ssh/known_hosts"
    fi
    for k in $(seq "$nodes"); do
        name=node$k
        namespace=dh5-$subnet-$name
        names+=("$name")
        ip netns add "$namespace"
        echo "namespace $namespace" >>"$dir/network"
        ip link add "dh5v${subnet}n$k" type veth peer name eth0 netns "$namespace"
        echo "veth dh5v${subnet}n$k" >>"$dir/network"
        ip link set "dh5v${subnet}n$k" master "$bridge" up
        ip -n "$namespace" addr add "$prefix.1$k/24" dev eth0
        ip -n "$namespace" link set lo up
        ip -n "$namespace" link set eth0 up
        echo "$prefix.1$k $name" >>"$dir/hosts"
        if ((ssh)); then
            mkdir -p "$dir/nodes/$name"
            # Listens on the node's own address only, inside its namespace.
            printf '%s\n' "ListenAddress $prefix.1$k" "HostKey $dir/ssh/host_ed25519" \
                "AuthorizedKeysFile $dir/ssh/authorized_keys" "PermitRootLogin prohibit-password" \
                "PasswordAuthentication no" "KbdInteractiveAuthentication no" "UsePAM no" "StrictModes no" \
                "PidFile $dir/nodes/$name/sshd.pid" >"$dir/nodes/$name/sshd_config"
            echo "$name,$prefix.1$k $(cut -d' ' -f1,2 "$dir/ssh/host_ed25519.pub")" >>"$dir/ssh/known_hosts"
        fi
        node_lines+="NodeName=$name NodeHostname=$name NodeAddr=$prefix.1$k CPUs=$cpus RealMemory=$memory State=UNKNOWN"$'\n'
    done
fi
for name in "${names[@]}"; do
    mkdir -p "$dir/nodes/$name/spool" "$dir/nodes/$name/scratch"
done
sed -e "s|@CTLD_HOST@|$ctld_host|g" -e "s|@DIR@|$dir|g" \
    -e "s|@CTLD_PORT@|$(free_port)|g" -e "s|@SLURMD_PORT@|$(free_port)|g" "$here/slurm.conf.in" >"$dir/slurm.conf"
{
    printf '%s\n' "$node_lines"
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} >>"$dir/slurm.conf"
printf '#!/bin/sh\necho export TMPDIR=%s\n' "$dir/scratch" >"$dir/task-prolog"
chmod 755 "$dir/task-prolog"
export SLURM_CONF=$dir/slurm.conf

setsid /usr/sbin/slurmctld -D -i -f "$SLURM_CONF" </dev/null >"$dir/slurmctld.stdout" 2>&1 &
echo $! >"$dir/slurmctld.started.pid"
for name in "${names[@]}"; do
    if ((nodes == 1)); then
        setsid /usr/sbin/slurmd -D -N "$name" -f "$SLURM_CONF" </dev/null >"$dir/nodes/$name/stdout" 2>&1 &
    else
        setsid nsenter --net="/run/netns/dh5-$subnet-$name" unshare --uts --mount --propagation private \
            bash "$here/cluster.sh" node "$dir" "$name" </dev/null >"$dir/nodes/$name/stdout" 2>&1 &
    fi
    echo $! >"$dir/nodes/$name/started.pid"
done
trap - ERR
for _ in $(seq 120); do
    for file in "$dir/slurmctld.started.pid" "$dir"/nodes/*/started.pid; do
        kill -0 "$(cat "$file")" 2>/dev/null || fail "$(basename "$(dirname "$file")")/$(basename "$file") exited"
    done
    idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle"' | wc -l || true)
    if ((idle == nodes)); then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
fail "the $nodes node(s) did not become idle within 60 s"
