#!/usr/bin/env bash
# Start or stop a one-node SLURM cluster for the tests (as root, from Debian's packages).
#
#   tests/slurm/cluster.sh start DIR   write DIR/slurm.conf, start munged, slurmctld and slurmd,
#                                      wait until the node is idle; prints export SLURM_CONF=...
#   tests/slurm/cluster.sh stop DIR    stop the daemons started for DIR
#
# A munged that is already running is reused and left running.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
action=${1:?usage: cluster.sh start|stop DIR}
dir=${2:?usage: cluster.sh start|stop DIR}

stop() {
    for daemon in slurmd slurmctld; do
        if [[ -f $dir/$daemon.pid ]]; then
            kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
        fi
    done
    if [[ -f $dir/munged.started ]]; then
        pkill -x munged 2>/dev/null || true
        rm -f "$dir/munged.started"
    fi
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi

mkdir -p "$dir/state" "$dir/spool"
if ! pgrep -x munged >/dev/null; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --force --keyfile /etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    else
        /usr/sbin/munged --force
    fi
    touch "$dir/munged.started"
fi

host=$(hostname -s)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEMORY@|$memory|g" -e "s|@DIR@|$dir|g" \
    -e "s|@CTLD_PORT@|$(free_port)|g" -e "s|@SLURMD_PORT@|$(free_port)|g" \
    "$here/slurm.conf.in" >"$dir/slurm.conf"
# Open MPI's PMIx support and the pmix plugin look for this file next to slurm.conf.
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld -f "$SLURM_CONF" -i
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n1 || true)
    if [[ $state == idle ]]; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "cluster.sh: the node did not become idle; slurmctld.log and slurmd.log in $dir say why" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
