#!/usr/bin/env bash
# Start a private single-node SLURM cluster on loopback, with job accounting
# (MariaDB + slurmdbd) and one advertised fake GPU, for testing
# `snakemake --profile slurm` (snakemake-executor-plugin-slurm) on one machine.
#
# Usage: scripts/slurm/start-cluster.sh [SCRATCH_DIR]
#   SCRATCH_DIR (or $THROMBUS_SLURM_DIR, default /tmp/thrombus-slurm) holds all
#   state, spool, pid, log and database files, the munge key and the configs.
#
# Progress goes to stderr; stdout carries only the environment to use, so
#   eval "$(scripts/slurm/start-cluster.sh)"
# sets SLURM_CONF in the calling shell. Stop with scripts/slurm/stop-cluster.sh.
#
# Needs root on Debian 12 (installs munge, slurm 22.05, slurmdbd and the
# MariaDB -core packages with apt-get when they are missing). Idempotent: a
# second call with the cluster up says so and exits 0.
#
# Environment knobs (all optional):
#   THROMBUS_SLURM_DIR      scratch dir (default /tmp/thrombus-slurm)
#   THROMBUS_SLURM_DB_PORT  MariaDB TCP port on 127.0.0.1 (default 3307)
#   THROMBUS_SLURM_PORTS    "ctld slurmd dbd" ports (default "6817 6818 6819")
#   THROMBUS_SLURM_TIMEOUT  seconds to wait for each daemon (default 60)
#   THROMBUS_SLURM_ACCOUNT  account created for root (default ci)
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # daemons live in sbin

log() { printf '[start-cluster] %s\n' "$*" >&2; }
die() { printf '[start-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

DIR=${1:-${THROMBUS_SLURM_DIR:-/tmp/thrombus-slurm}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
DB_PORT=${THROMBUS_SLURM_DB_PORT:-3307}
read -r CTLD_PORT SLURMD_PORT DBD_PORT <<<"${THROMBUS_SLURM_PORTS:-6817 6818 6819}"
TIMEOUT=${THROMBUS_SLURM_TIMEOUT:-60}
ACCOUNT=${THROMBUS_SLURM_ACCOUNT:-ci}
CLUSTER=thrombus
HOST=$(hostname -s)

ETC=$DIR/etc RUN=$DIR/run LOGD=$DIR/log MUNGE=$DIR/munge DB=$DIR/mariadb
STATE=$DIR/state SPOOL=$DIR/spool
SLURM_CONF_FILE=$ETC/slurm.conf
MUNGE_SOCK=$MUNGE/munge.socket
DB_SOCK=$DB/mariadbd.sock
DB_PASS=thrombus-ci

# ---------------------------------------------------------------- helpers
# pid_alive NAME: the pid in $RUN/NAME.pid is a live process called NAME
pid_alive() {
    local name=$1 pidfile=$RUN/$1.pid pid comm
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}

# wait_for WHAT LOGFILE CMD...: retry CMD until it succeeds or TIMEOUT passes
wait_for() {
    local what=$1 logfile=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what"
            fail_with_log "$logfile"
        fi
        sleep 0.5
    done
    log "$what is up"
}

fail_with_log() {
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf '%s\n' "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
    die "cluster start failed (daemons already started are left running for inspection; stop them with scripts/slurm/stop-cluster.sh $DIR)"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

print_env() {
    cat >"$DIR/env.sh" <<EOF
export SLURM_CONF=$SLURM_CONF_FILE
export THROMBUS_SLURM_DIR=$DIR
export THROMBUS_SLURM_ACCOUNT=$ACCOUNT
EOF
    log "environment to use (also in $DIR/env.sh):"
    cat "$DIR/env.sh"
}

cluster_up() {
    local d
    for d in munged mariadbd slurmdbd slurmctld slurmd; do pid_alive "$d" || return 1; done
    [[ $(SLURM_CONF=$SLURM_CONF_FILE timeout 10 sinfo -h -N -o %t 2>/dev/null) =~ ^(idle|mix|alloc) ]]
}

# ---------------------------------------------------------------- already up?
if [[ -f $SLURM_CONF_FILE ]] && cluster_up; then
    log "cluster already up in $DIR (nothing to do)"
    print_env
    exit 0
fi

[[ $(id -u) == 0 ]] || die "must run as root (slurmd and the package install need it)"

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get to install them"
    log "installing: ${missing[*]}"
    t0=$SECONDS
    policy=/usr/sbin/policy-rc.d policy_bak=""
    if [[ -e $policy ]]; then policy_bak=$(mktemp /usr/sbin/policy-rc.d.thrombus.XXXXXX); cp -p "$policy" "$policy_bak"; fi
    restore_policy() {
        if [[ -n $policy_bak ]]; then mv -f "$policy_bak" "$policy"; else rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\n# temporary, from thrombus start-cluster.sh: do not start daemons\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >"$DIR/apt.log" 2>&1; }
    # apt-get update only when the package lists do not know the packages
    # (fresh image) or the install fails (stale lists).
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1 || ! apt_install; then
        log "running apt-get update"
        apt-get update -q -o DPkg::Lock::Timeout=300 >"$DIR/apt-update.log" 2>&1 || fail_with_log "$DIR/apt-update.log"
        apt_install || fail_with_log "$DIR/apt.log"
    fi
    restore_policy
    trap - EXIT
    log "packages installed in $((SECONDS - t0))s"
fi
for b in munged mungekey munge unmunge mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sinfo srun sacct sacctmgr; do
    command -v "$b" >/dev/null || die "binary $b not found after install"
done

# ---------------------------------------------------------------- free ports?
# a port taken by something other than our own daemon would make that daemon fail late
for spec in "mariadbd:$DB_PORT:THROMBUS_SLURM_DB_PORT" "slurmdbd:$DBD_PORT:THROMBUS_SLURM_PORTS" \
            "slurmctld:$CTLD_PORT:THROMBUS_SLURM_PORTS" "slurmd:$SLURMD_PORT:THROMBUS_SLURM_PORTS"; do
    IFS=: read -r d port knob <<<"$spec"
    if ! pid_alive "$d" && port_in_use "$port"; then
        die "port $port on 127.0.0.1 (for $d) is in use by another process (another cluster?); set $knob"
    fi
done

# ---------------------------------------------------------------- layout + configs
mkdir -p "$ETC" "$RUN" "$LOGD" "$MUNGE" "$DB" "$STATE" "$SPOOL/slurmd"
chmod 700 "$DIR" "$MUNGE"   # munged refuses group/world-writable dirs on its path

ncpu=$(nproc)
mem_total_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
mem_mb=$((mem_total_mb * 80 / 100))
detected=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
if [[ -n $detected ]] && ((detected < mem_mb)); then mem_mb=$detected; fi

write_if_changed() {  # write_if_changed FILE MODE (content on stdin)
    local f=$1 mode=$2 tmp
    tmp=$(mktemp "$f.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv -f "$tmp" "$f"; fi
}

write_if_changed "$SLURM_CONF_FILE" 644 <<EOF
# generated by thrombus scripts/slurm/start-cluster.sh -- private test cluster
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
MinJobAge=300
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
# for slurmdbd connections the munge socket comes from here, not AuthInfo
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

write_if_changed "$ETC/gres.conf" 644 <<EOF
# one fake GPU so that --gpus=1 / --gres=gpu:1 jobs can be scheduled
NodeName=$HOST Name=gpu File=/dev/null
EOF

# slurmdbd refuses a slurmdbd.conf that is not mode 600 and owned by SlurmUser
write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
# generated by thrombus scripts/slurm/start-cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOGD/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

export SLURM_CONF=$SLURM_CONF_FILE   # slurmdbd finds slurmdbd.conf and gres.conf next to it

# snakemake-executor-plugin-slurm-jobstep >= 0.6.1 removes every SLURM_* variable
# (SLURM_CONF included) before its nested `srun` inside the job, so that srun only
# finds the cluster at the compiled-in default path, as on a real site. Link it
# there when that path is free; stop-cluster.sh removes the link again.
SYS_CONF=/etc/slurm/slurm.conf
if [[ -L $SYS_CONF && $(readlink "$SYS_CONF") == "$SLURM_CONF_FILE" ]]; then
    :
elif [[ -e $SYS_CONF || -L $SYS_CONF ]]; then
    log "WARNING: $SYS_CONF exists and is not ours; jobs whose nested srun drops SLURM_CONF"
    log "         (snakemake-executor-plugin-slurm-jobstep >= 0.6.1) will talk to that cluster instead"
else
    mkdir -p "$(dirname "$SYS_CONF")"
    ln -s "$SLURM_CONF_FILE" "$SYS_CONF"
    echo "$SYS_CONF" >"$RUN/linked-slurm-conf"
    log "linked $SYS_CONF -> $SLURM_CONF_FILE"
fi

# ---------------------------------------------------------------- munged
if pid_alive munged; then
    log "munged already running"
else
    [[ -s $MUNGE/munge.key ]] || mungekey -c -k "$MUNGE/munge.key" >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
    chmod 600 "$MUNGE/munge.key"
    log "starting munged"
    munged --force --key-file="$MUNGE/munge.key" --socket="$MUNGE_SOCK" \
        --pid-file="$RUN/munged.pid" --log-file="$LOGD/munged.log" \
        --seed-file="$MUNGE/munged.seed" </dev/null >>"$LOGD/munged.out" 2>&1 \
        || fail_with_log "$LOGD/munged.out" "$LOGD/munged.log"
fi
munge_ok() { munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK"; }
wait_for munged "$LOGD/munged.log" munge_ok

# ---------------------------------------------------------------- mariadbd
db_sql() { mariadb --no-defaults -S "$DB_SOCK" -u root -N -B -e "$1"; }
if pid_alive mariadbd; then
    log "mariadbd already running"
else
    if [[ ! -d $DB/data/mysql ]]; then
        log "initialising MariaDB data dir $DB/data"
        rm -rf "$DB/data"
        mariadb-install-db --no-defaults --datadir="$DB/data" --user=root \
            --auth-root-authentication-method=normal --skip-test-db \
            >"$LOGD/mariadb-install.log" 2>&1 || fail_with_log "$LOGD/mariadb-install.log"
    fi
    log "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid mariadbd --no-defaults --user=root --datadir="$DB/data" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCK" \
        --pid-file="$RUN/mariadbd.pid" --log-error="$LOGD/mariadbd.log" \
        --skip-name-resolve --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --max-connections=50 \
        </dev/null >>"$LOGD/mariadbd.out" 2>&1 &
fi
wait_for mariadbd "$LOGD/mariadbd.log" db_sql 'SELECT 1'
db_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        FLUSH PRIVILEGES;" >/dev/null 2>>"$LOGD/mariadbd.log" || fail_with_log "$LOGD/mariadbd.log"

# ---------------------------------------------------------------- slurmdbd
if pid_alive slurmdbd; then
    log "slurmdbd already running"
else
    log "starting slurmdbd"
    slurmdbd </dev/null >>"$LOGD/slurmdbd.out" 2>&1 || fail_with_log "$LOGD/slurmdbd.out" "$LOGD/slurmdbd.log"
fi
wait_for slurmdbd "$LOGD/slurmdbd.log" timeout 10 sacctmgr -n show cluster

sacct_has() { [[ -n $(timeout 10 sacctmgr -n -P show "$@" 2>/dev/null) ]]; }
sacct_has cluster "$CLUSTER" format=cluster || timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacct_has account "$ACCOUNT" format=account || timeout 20 sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=thrombus-ci Organization=thrombus >/dev/null
if ! timeout 10 sacctmgr -n -P show assoc user=root account="$ACCOUNT" format=user 2>/dev/null | grep -q root; then
    timeout 20 sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
fi
sacct_has account "$ACCOUNT" format=account || fail_with_log "$LOGD/slurmdbd.log"
log "accounting ready (cluster $CLUSTER, account $ACCOUNT, user root)"

# ---------------------------------------------------------------- slurmctld
if pid_alive slurmctld; then
    log "slurmctld already running"
else
    log "starting slurmctld"
    slurmctld </dev/null >>"$LOGD/slurmctld.out" 2>&1 || fail_with_log "$LOGD/slurmctld.out" "$LOGD/slurmctld.log"
fi
wait_for slurmctld "$LOGD/slurmctld.log" timeout 10 sinfo

# ---------------------------------------------------------------- slurmd
if pid_alive slurmd; then
    log "slurmd already running"
else
    log "starting slurmd"
    slurmd </dev/null >>"$LOGD/slurmd.out" 2>&1 || fail_with_log "$LOGD/slurmd.out" "$LOGD/slurmd.log"
fi
node_idle() { [[ $(timeout 10 sinfo -h -N -o %t) =~ ^(idle|mix|alloc) ]]; }
wait_for "slurmd (node $HOST idle)" "$LOGD/slurmd.log" node_idle
# a node left DOWN/DRAIN by an earlier run is resumed by ReturnToService=2 once slurmd registers

# ---------------------------------------------------------------- smoke test
out=$(timeout 60 srun -N1 -n1 -t 1 hostname 2>&1) || {
    log "srun hostname failed: $out"
    fail_with_log "$LOGD/slurmctld.log" "$LOGD/slurmd.log"
}
log "srun hostname -> $out"
log "cluster up: $(sinfo -h -N -o '%N %t cpus=%c mem=%mMB gres=%G')"
print_env
