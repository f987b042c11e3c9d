#!/usr/bin/env bash
# Stop the private SLURM cluster started by scripts/slurm/start-cluster.sh.
#
# Usage: scripts/slurm/stop-cluster.sh [SCRATCH_DIR]   (default $THROMBUS_SLURM_DIR or /tmp/thrombus-slurm)
#
# Only the daemons named by the pid files in SCRATCH_DIR/run are stopped (and only
# when the pid still belongs to a process of that name), in reverse start order:
# slurmd, slurmctld, slurmdbd, mariadbd, munged. Jobs still queued or running on
# this private cluster are cancelled first. The scratch dir itself is kept (pass
# --purge as second argument to delete it afterwards).
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # daemons live in sbin

log() { printf '[stop-cluster] %s\n' "$*" >&2; }

DIR=${1:-${THROMBUS_SLURM_DIR:-/tmp/thrombus-slurm}}
PURGE=${2:-}
TIMEOUT=${THROMBUS_SLURM_TIMEOUT:-60}
if [[ ! -d $DIR ]]; then
    log "no scratch dir $DIR: nothing to stop"
    exit 0
fi
DIR=$(cd "$DIR" && pwd -P)
RUN=$DIR/run

# pid_of NAME: print the pid in $RUN/NAME.pid when it is a live process called NAME
pid_of() {
    local name=$1 pidfile=$RUN/$1.pid pid comm
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]] || return 1
    echo "$pid"
}

# cancel jobs of this private cluster so no slurmstepd outlives slurmd
if [[ -f $DIR/etc/slurm.conf ]] && pid_of slurmctld >/dev/null; then
    export SLURM_CONF=$DIR/etc/slurm.conf
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 20); do
            [[ -z $(timeout 10 squeue -h -t R,CG -o %i 2>/dev/null || true) ]] && break
            sleep 0.5
        done
    fi
fi

status=0
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    if ! pid=$(pid_of "$name"); then
        rm -f "$RUN/$name.pid"
        continue
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; do
        if ((SECONDS >= deadline)); then
            log "$name (pid $pid) did not exit within ${TIMEOUT}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            [[ -d /proc/$pid ]] && { log "$name (pid $pid) still alive"; status=1; }
            break
        fi
        sleep 0.2
    done
    rm -f "$RUN/$name.pid"
done

# the /etc/slurm/slurm.conf symlink start-cluster.sh made (only if it still points here)
if [[ -s $RUN/linked-slurm-conf ]]; then
    link=$(cat "$RUN/linked-slurm-conf")
    if [[ -L $link && $(readlink "$link") == "$DIR/etc/slurm.conf" ]]; then
        rm -f "$link"
        log "removed symlink $link"
    fi
    rm -f "$RUN/linked-slurm-conf"
fi

if [[ $PURGE == --purge ]]; then
    log "removing $DIR"
    rm -rf "$DIR"
fi
((status == 0)) && log "cluster in $DIR stopped"
exit "$status"
