# shellcheck shell=bash
# Helpers shared by scripts/test, scripts/up and scripts/down. Source it; it does nothing by itself.
#
# They install and run Slipway's infrastructure on a plain Debian 12 machine WITHOUT Docker:
# PostgreSQL from Debian's package (a private cluster per caller, never the system one) and Tansu,
# a Kafka-protocol broker written in Rust, installed with `cargo install`.
#
# Conventions:
#   - Functions log to stderr ("[slipway] ...") so stdout stays usable for values (free_port).
#   - A function that cannot do its job calls `die`, which exits the calling script. The callers
#     run with `set -euo pipefail` and clean up in an EXIT trap.
#   - Pid files hold "PID STARTTIME" (STARTTIME from /proc/PID/stat), so a pid file left over from
#     before a reboot can never make us signal an unrelated process that got the same pid.

# As root, PostgreSQL clusters live under this directory (see pg_home for why not in the repo).
# /var/tmp rather than /tmp: it survives reboots on Debian, so `scripts/up` keeps its data.
SLIPWAY_PG_ROOT="${SLIPWAY_PG_ROOT:-/var/tmp/slipway-pg}"

# Where the builder of scripts/up runs builds for the checkout at $1: outside it (cargo would
# find its Cargo.toml above them; .slipway/ holds the admin token), one dir per checkout.
builds_dir() {
  printf '%s\n' "${SLIPWAY_BUILDS_DIR:-/var/tmp/slipway-builds/$(printf '%s' "$1" | cksum | cut -d' ' -f1)}"
}

# Tansu version known to work with rdkafka 0.39 (see shared ARCHITECTURE.md).
SLIPWAY_TANSU_VERSION="0.6.0"

log() { printf '[slipway] %s\n' "$*" >&2; }

die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------

# Run a command as root. apt needs it; CI and fresh machines run as root, a developer may use sudo.
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "root is needed to run: $*"
  fi
}

# apt-get install, with one `apt-get update` per script run first: a fresh machine has empty
# package lists, and refreshing them more than once is just slow.
_SLIPWAY_APT_UPDATED=0
apt_install() {
  if [[ $_SLIPWAY_APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _SLIPWAY_APT_UPDATED=1
  fi
  log "apt-get install $*"
  # No recommends: docker-compose would otherwise pull in docker.io, which cannot run here anyway.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# True when a Debian package is installed (not merely known or half-removed).
deb_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# Tools needed to build the workspace (rdkafka builds its bundled librdkafka with make and links
# zlib/openssl) and to run these scripts (curl, python3). Checked with dpkg first so that a machine
# that has everything never touches apt (which needs the network and a lock). Debian's old
# docker-compose is only used to validate docker-compose.yml statically, so failing to install it
# is a warning, not an error.
ensure_build_deps() {
  local pkg missing=()
  # cargo (Debian's, in /usr/bin): what Cargo projects without slipway.toml build with. As root
  # the builder runs builds as an unprivileged uid, which cannot reach rustup's toolchain under
  # /root; the workspace itself still builds with rustup's pinned one (ensure_cargo).
  for pkg in build-essential pkg-config zlib1g-dev libssl-dev curl python3 cargo; do
    deb_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} > 0)); then
    apt_install "${missing[@]}"
  fi
  if ! command -v docker-compose >/dev/null 2>&1; then
    apt_install docker-compose || log "warning: could not install docker-compose; the compose file test will fail"
  fi
  # The builder fetches the commits it builds with the git command line.
  command -v git >/dev/null 2>&1 || apt_install git
  ensure_cargo
}

# What the edge benchmark compares against: nginx as a reverse proxy and wrk to load both.
# nginx-light is enough (proxy and `return`); plain nginx is the fallback where it is not
# packaged. Never fatal: the bench prints why it skips when either is missing.
ensure_bench_deps() {
  if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    apt_install nginx-light || apt_install nginx || log "warning: could not install nginx; the edge bench will skip"
  fi
  if ! command -v haproxy >/dev/null 2>&1 && [[ ! -x /usr/sbin/haproxy ]]; then
    apt_install haproxy || log "warning: could not install haproxy; the edge bench will skip"
  fi
  command -v wrk >/dev/null 2>&1 || apt_install wrk || log "warning: could not install wrk; the edge and discovery benches will skip"
  # etcd 3.4 (Debian's), the discovery bench's peer; etcdctl beside it for a look by hand.
  if ! command -v etcd >/dev/null 2>&1; then
    apt_install etcd-server etcd-client || log "warning: could not install etcd; the discovery bench will skip"
  fi
}

# The workspace builds with rustup's cargo (the pinned toolchain of rust-toolchain.toml), which
# this machine cannot download; find an existing install and put it first in PATH, ahead of
# Debian's /usr/bin/cargo (too old for the workspace; there for builds, see ensure_build_deps).
# Non-login shells in CI often do not source ~/.cargo/env.
ensure_cargo() {
  local cargo_bin="${CARGO_HOME:-${HOME:?}/.cargo}/bin"
  if [[ -x $cargo_bin/cargo ]]; then
    PATH="$cargo_bin:$PATH"
    export PATH
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
}

# ---------------------------------------------------------------------------------------------
# Processes, ports, pid files
# ---------------------------------------------------------------------------------------------

# Print the start time (clock ticks since boot) of a live process; fail if there is no such
# process or it is a zombie (a child of ours that exited but was not reaped yet is not "running").
proc_starttime() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The command name (field 2) may contain spaces and parentheses: split after the last ") ".
  read -r -a fields <<<"${stat##*) }"
  [[ ${fields[0]} != Z ]] || return 1
  printf '%s\n' "${fields[19]}" # field 22 of proc(5)
}

proc_alive() { proc_starttime "$1" >/dev/null; }

# Record PID (and its start time, see the header) in FILE.
write_pidfile() {
  local file=$1 pid=$2 start
  start=$(proc_starttime "$pid") || start=""
  mkdir -p "$(dirname "$file")"
  printf '%s %s\n' "$pid" "$start" >"$file"
}

# Print the pid recorded in FILE if that very process is still running; fail otherwise.
pidfile_pid() {
  local file=$1 pid="" start="" now
  [[ -f $file ]] || return 1
  read -r pid start <"$file" || true
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  now=$(proc_starttime "$pid") || return 1
  [[ -z $start || $start == "$now" ]] || return 1
  printf '%s\n' "$pid"
}

# Stop the process recorded in FILE: SIGTERM (our services drain on it), up to 10 s to exit,
# then SIGKILL. A missing, stale or dead pid file is fine: the goal is "not running". The file is
# removed in every case.
stop_pidfile() {
  local file=$1 pid i
  if pid=$(pidfile_pid "$file"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      proc_alive "$pid" || break
      sleep 0.1
    done
    if proc_alive "$pid"; then
      log "pid $pid ($(basename "$file" .pid)) still running 10 s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      # SIGKILL cannot be ignored; wait briefly so its ports are free for whoever comes next.
      for ((i = 0; i < 20; i++)); do
        proc_alive "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$file"
}

# Run CMD... in the background in a new session, stdin from /dev/null, stdout and stderr to
# LOGFILE (truncated), and record its pid in PIDFILE; also sets SPAWNED_PID.
# A new session: Ctrl-C or a closed terminal must not kill servers that `up` leaves running, and
# `test` stops its own explicitly. The pid is written by the process itself just before it execs
# CMD, because `setsid` forks (so $! would be wrong) when the caller has job control enabled.
spawn_detached() {
  local pidfile=$1 logfile=$2 pid="" i
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  rm -f "$pidfile.new"
  # shellcheck disable=SC2016 # $0 and $@ are expanded by the inner bash
  setsid bash -c 'echo "$$" >"$0.new" && exec "$@"' "$pidfile" "$@" >"$logfile" 2>&1 </dev/null &
  for ((i = 0; i < 200; i++)); do
    [[ -s $pidfile.new ]] && break
    sleep 0.05
  done
  read -r pid 2>/dev/null <"$pidfile.new" || die "could not start $1 (log: $logfile)"
  rm -f "$pidfile.new"
  write_pidfile "$pidfile" "$pid"
  SPAWNED_PID=$pid
}

# True when something accepts TCP connections on HOST:PORT (bash's /dev/tcp, no extra tools).
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Wait until HOST:PORT accepts connections, for at most TIMEOUT seconds. With PID, give up as soon
# as that process is gone: waiting for a port of a crashed process is pointless.
wait_port() {
  local host=$1 port=$2 timeout=$3 pid=${4:-} deadline
  deadline=$((SECONDS + timeout))
  until port_open "$host" "$port"; do
    if [[ -n $pid ]] && ! proc_alive "$pid"; then
      log "process $pid exited before $host:$port accepted connections"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $host:$port"
      return 1
    fi
    sleep 0.1
  done
}

# Print a TCP port on 127.0.0.1 that is free right now (the kernel picks it). There is a small
# window before the caller binds it; callers start each server before picking the next port.
free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Poll URL until it answers 200, for at most TIMEOUT seconds; with PID, fail fast if that process
# exits. Readiness is a condition to poll with a deadline, never a fixed sleep.
wait_http() {
  local url=$1 timeout=$2 pid=${3:-} deadline code=""
  deadline=$((SECONDS + timeout))
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
    [[ $code == 200 ]] && return 0
    if [[ -n $pid ]] && ! proc_alive "$pid"; then
      log "process $pid exited while waiting for $url to answer 200"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $url to answer 200 (last status: ${code:-none})"
      return 1
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------

# Set PG_BIN to the bin directory of the newest PostgreSQL installed from Debian packages.
# Fails (without installing) when there is none; `down` uses this to avoid installing anything.
pg_find_bin() {
  local dir found=""
  while IFS= read -r dir; do
    [[ -x $dir/initdb ]] && found=$dir
  done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -V)
  [[ -n $found ]] || return 1
  PG_BIN=$found
  export PG_BIN
}

# Install Debian's PostgreSQL server when no initdb exists yet, then export PG_BIN.
# Note: the Debian package also creates (and, where it can, starts) its own "main" cluster on
# port 5432. We never use it; our clusters are private and on other ports.
ensure_postgres() {
  if ! pg_find_bin; then
    apt_install postgresql
    pg_find_bin || die "PostgreSQL installed, but no /usr/lib/postgresql/*/bin/initdb found"
  fi
  log "PostgreSQL binaries: $PG_BIN"
}

# Run a PostgreSQL server tool. initdb and postgres refuse to run as root, so as root we become
# the `postgres` OS user that the Debian package creates; `cd /` first because the caller's
# working directory (say a checkout in root's home) may be closed to that user.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# The process target's work directory for the checkout at $1 (releases, instances' homes and
# output): outside the checkout and its .slipway/ (which holds the admin token and the secrets
# key), one per checkout so that two stacks never adopt or reap each other's instances.
# SLIPWAY_INSTANCES_DIR overrides it.
instances_dir() {
  local key
  key=$(printf '%s' "$1" | sha256sum | cut -c1-16)
  printf '%s\n' "${SLIPWAY_INSTANCES_DIR:-/var/tmp/slipway-instances-$key}"
}

# ---------------------------------------------------------------------------------------------
# Instances of the process target
# ---------------------------------------------------------------------------------------------
# The deployer records each run of an instance in <workdir>/instances/<id>/instance.json (one
# "key": value per line): pid, pgid (the run leads its own process group), start_time (field 22
# of /proc/PID/stat), boot_id and, as root, uid. That is all `scripts/down` needs: no database,
# no deployer, and nothing a program can rewrite (its title, argv or environment).

# Print the value of KEY in the run record FILE (quotes stripped; `null` for none).
record_field() {
  sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\} *$/\1/p" "$1" | head -n 1
}

# Print the live processes of the run recorded in FILE: its leader while it is still that very
# process (same start time and boot, same uid when recorded), and the members of its group
# started since (children it forked; while one lives the kernel does not reuse the group's
# number). A pid reused by an unrelated process has another start time: never printed.
run_pids() {
  local file=$1 pid pgid start boot uid now_boot stat p line fields
  pid=$(record_field "$file" pid)
  pgid=$(record_field "$file" pgid)
  start=$(record_field "$file" start_time)
  boot=$(record_field "$file" boot_id)
  uid=$(record_field "$file" uid)
  [[ $pid =~ ^[0-9]+$ && $pgid =~ ^[0-9]+$ && $start =~ ^[0-9]+$ ]] || return 0
  ((pgid > 1)) || return 0
  now_boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
  if [[ -n $boot && $boot != null && -n $now_boot && $boot != "$now_boot" ]]; then
    return 0 # started before a reboot: long gone
  fi
  for stat in /proc/[0-9]*/stat; do
    p=${stat#/proc/}
    p=${p%/stat}
    { read -r line <"$stat"; } 2>/dev/null || continue
    # The command name (field 2) may contain spaces and parentheses: split after the last ") ".
    read -r -a fields <<<"${line##*) }"
    [[ ${fields[0]} != Z ]] || continue
    if [[ $p == "$pid" ]]; then
      [[ ${fields[19]} == "$start" ]] || continue
    elif [[ ${fields[2]} != "$pgid" ]] || ((fields[19] < start)); then
      continue
    fi
    if [[ $uid =~ ^[0-9]+$ ]]; then
      [[ $(awk '/^Uid:/ { print $2 }' "/proc/$p/status" 2>/dev/null) == "$uid" ]] || continue
    fi
    printf '%s\n' "$p"
  done
}

# Send SIGNAL to the run recorded in FILE: its whole group while the leader is the recorded
# process, and each of its live processes. Fails when nothing of it runs.
signal_run() {
  local file=$1 signal=$2 pids p
  pids=$(run_pids "$file")
  [[ -n $pids ]] || return 1
  if grep -qxF "$(record_field "$file" pid)" <<<"$pids"; then
    kill "-$signal" -- "-$(record_field "$file" pgid)" 2>/dev/null || true
  fi
  for p in $pids; do kill "-$signal" "$p" 2>/dev/null || true; done
}

# Stop every instance of the process target working in DIR: SIGTERM to each run's group, up to
# GRACE seconds (default 10) for them to exit, then SIGKILL for what is left.
stop_instances() {
  local dir=$1 grace=${2:-10} file live=() left
  for file in "$dir"/instances/*/instance.json; do
    [[ -f $file && -n $(run_pids "$file") ]] && live+=("$file")
  done
  ((${#live[@]} > 0)) || return 0
  log "stopping ${#live[@]} instance(s) of the process target"
  for file in "${live[@]}"; do signal_run "$file" TERM || true; done
  for _ in $(seq $((grace * 10))); do
    left=0
    for file in "${live[@]}"; do [[ -z $(run_pids "$file") ]] || left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  for file in "${live[@]}"; do signal_run "$file" KILL || true; done
}

# Absolute path of PATH with its parent's symlinks resolved but PATH itself kept as is (it may be
# our own symlink, see pg_home). Works for paths that do not exist (yet).
abs_path() {
  local parent
  parent=$(dirname "$1")
  if [[ -d $parent ]]; then
    printf '%s/%s\n' "$(cd "$parent" && pwd -P)" "$(basename "$1")"
  else
    realpath -m "$1"
  fi
}

# Print the directory that really holds the cluster for the caller's DATADIR. It contains data/
# (PGDATA), sock/ (unix socket directory) and postgres.log.
#
# As root the cluster must be owned by `postgres`, and that user must be able to traverse every
# parent directory. A repo in root's home (mode 700), or a `mktemp -d` directory (mode 700), is not
# traversable. Opening them up with `chmod o+x` would change permissions of directories that are
# not ours (someone's home), so instead the cluster lives in $SLIPWAY_PG_ROOT/<key>, a directory
# owned by postgres, keyed by a hash of DATADIR's absolute path, and DATADIR itself becomes a
# symlink to it (a pointer for people and for `down --purge`). If the symlink exists, its target
# wins, so a moved repo still finds its data. As a normal user the cluster simply lives in DATADIR.
pg_home() {
  local datadir=$1 key
  if [[ $EUID -ne 0 ]]; then
    abs_path "$datadir"
  elif [[ -L $datadir ]]; then
    readlink -f "$datadir"
  else
    key=$(abs_path "$datadir" | sha256sum | cut -c1-16)
    printf '%s/%s\n' "$SLIPWAY_PG_ROOT" "$key"
  fi
}

# Create the cluster's home directory with the right owner, and the DATADIR pointer when root.
pg_prepare_home() {
  local datadir=$1 home=$2
  if [[ $EUID -ne 0 ]]; then
    mkdir -p "$home/sock"
    chmod 700 "$home"
    return
  fi
  # /var/tmp is world-writable: refuse a symlink planted where our root directory should be.
  [[ ! -L $SLIPWAY_PG_ROOT ]] || die "$SLIPWAY_PG_ROOT is a symlink; refusing to use it"
  install -d -o postgres -g postgres -m 700 "$SLIPWAY_PG_ROOT" "$home" "$home/sock"
  if [[ -L $datadir ]]; then
    : # pointer already in place
  elif [[ -e $datadir ]]; then
    die "$datadir exists but is not a symlink to the cluster in $home; move it away"
  else
    ln -s "$home" "$datadir"
  fi
}

# Port of the server running on PGDATA, from line 4 of postmaster.pid; fails when not running.
pg_running_port() {
  local pgdata=$1
  as_pg "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1 || return 1
  sed -n 4p "$pgdata/postmaster.pid"
}

# Start a private PostgreSQL cluster for DATADIR on 127.0.0.1:PORT, creating it on first use
# and reusing it afterwards, then make sure database `slipway` exists.
# No trust authentication, not even on loopback: builds and instances run on this machine, and
# a superuser anyone local can become would let them write an admin token into the gateway's
# tables. The superuser `postgres` has a generated password (PG_PWFILE, mode 600) and every
# connection authenticates with scram-sha-256 (pg_secure_cluster).
# fsync=off: these clusters hold test or local development data; speed matters more than
# surviving an OS crash. Exports PG_HOME, PG_DATA, PG_SOCKDIR, PG_LOGFILE and PG_PWFILE.
start_postgres() {
  local datadir=$1 port=$2 running_port
  [[ -n ${PG_BIN:-} ]] || pg_find_bin || die "PostgreSQL is not installed (ensure_postgres installs it)"
  mkdir -p "$(dirname "$datadir")"
  PG_HOME=$(pg_home "$datadir")
  pg_prepare_home "$datadir" "$PG_HOME"
  PG_DATA=$PG_HOME/data
  PG_SOCKDIR=$PG_HOME/sock
  PG_LOGFILE=$PG_HOME/postgres.log
  PG_PWFILE=$PG_HOME/superuser-password
  export PG_HOME PG_DATA PG_SOCKDIR PG_LOGFILE PG_PWFILE

  pg_make_pwfile
  if [[ ! -s $PG_DATA/PG_VERSION ]]; then
    log "creating PostgreSQL cluster in $PG_DATA"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" --auth=scram-sha-256 -U postgres --pwfile="$PG_PWFILE" \
      --encoding=UTF8 --no-locale --no-sync >"$PG_HOME/initdb.log" 2>&1 ||
      { cat "$PG_HOME/initdb.log" >&2; die "initdb failed"; }
    pg_write_hba
  fi

  if running_port=$(pg_running_port "$PG_DATA"); then
    if [[ $running_port == "$port" ]]; then
      log "PostgreSQL already running on 127.0.0.1:$port (reusing it)"
    else
      log "PostgreSQL running on port $running_port, wanted $port: restarting it"
      as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
      running_port=""
    fi
  fi
  if [[ -z $running_port ]]; then
    ! port_open 127.0.0.1 "$port" || die "port $port is already in use; pick another PostgreSQL port"
    # pg_ctl passes -o through a shell, hence the single quotes around the socket directory.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOGFILE" -w -t 60 \
      -o "-p $port -k '$PG_SOCKDIR' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
      start >/dev/null ||
      { tail -n 30 "$PG_LOGFILE" >&2; die "PostgreSQL did not start (log: $PG_LOGFILE)"; }
    log "PostgreSQL started on 127.0.0.1:$port"
  fi

  pg_secure_cluster "$port"
  pg_psql "$port" -c 'select 1' >/dev/null || die "PostgreSQL on port $port does not answer"
  if [[ "$(pg_psql "$port" -tAc "select 1 from pg_database where datname = 'slipway'")" != 1 ]]; then
    pg_psql "$port" -c 'create database slipway' >/dev/null
  fi
}

# The superuser's password, made once per cluster: 32 random bytes in hex (URL-safe, so it can
# go in SLIPWAY_TEST_DATABASE_URL as is). As root the file belongs to `postgres`, which runs initdb.
pg_make_pwfile() {
  if [[ ! -s $PG_PWFILE ]]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$PG_PWFILE")
  fi
  chmod 600 "$PG_PWFILE"
  [[ $EUID -ne 0 ]] || chown postgres:postgres "$PG_PWFILE"
}

# pg_hba.conf: password (SCRAM) authentication for every local and loopback connection.
_SLIPWAY_HBA_MARK="# Written by scripts/lib.sh (pg_write_hba): no trust authentication."
pg_write_hba() {
  as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<HBA
$_SLIPWAY_HBA_MARK
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128 scram-sha-256
HBA
}

# A cluster made by an older lib.sh trusts every local connection and its superuser has no
# password: give it the password (over that trusted connection, the last one), then our
# pg_hba.conf, and reload. The password reaches psql on stdin, never on a command line.
pg_secure_cluster() {
  local port=$1
  as_pg grep -qxF "$_SLIPWAY_HBA_MARK" "$PG_DATA/pg_hba.conf" && return 0
  log "PostgreSQL cluster in $PG_DATA used trust authentication: setting a superuser password"
  printf "ALTER ROLE postgres PASSWORD '%s';\n" "$(<"$PG_PWFILE")" | pg_psql "$port" >/dev/null
  pg_write_hba
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" reload >/dev/null
}

# psql against a local cluster over TCP as user postgres (no ~/.psqlrc, stop on the first error).
# The password goes through the environment of psql alone, never its command line.
pg_psql() {
  local port=$1
  shift
  PGPASSWORD="$(<"${PG_PWFILE:?start_postgres sets PG_PWFILE}")" PGCONNECT_TIMEOUT=5 \
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

# Stop the cluster of DATADIR if it runs (fast mode: roll back open transactions, no waiting for
# clients). Already stopped, never created or PostgreSQL not installed all count as success.
stop_postgres() {
  local datadir=$1 home
  [[ -n ${PG_BIN:-} ]] || pg_find_bin || return 0
  home=$(pg_home "$datadir")
  [[ -f $home/data/postmaster.pid ]] || return 0
  if ! as_pg "$PG_BIN/pg_ctl" -D "$home/data" -m fast -w -t 60 stop >/dev/null 2>&1; then
    if as_pg "$PG_BIN/pg_ctl" -D "$home/data" status >/dev/null 2>&1; then
      log "warning: PostgreSQL in $home/data did not stop"
      return 1
    fi
  fi
}

# Stop the cluster of DATADIR and delete it, with the DATADIR pointer. As root this also finds a
# cluster whose pointer was deleted by hand (pg_home falls back to the key of DATADIR's path).
purge_postgres() {
  local datadir=$1 home
  home=$(pg_home "$datadir")
  stop_postgres "$datadir" || true
  rm -rf "$home"
  rm -rf "$datadir"
}

# ---------------------------------------------------------------------------------------------
# Tansu (Kafka protocol broker)
# ---------------------------------------------------------------------------------------------

# Export TANSU_BIN, installing Tansu with cargo if it is nowhere to be found. Debian has no Kafka
# and Docker is not available, and Debian's librdkafka is too old for Tansu anyway; Tansu is a
# single Rust binary from crates.io. The install compiles for about 9 minutes, once per machine.
# If another `cargo install tansu` is already running (a parallel CI step, a second terminal), wait
# for it rather than compiling the same thing twice into the same directory.
ensure_tansu() {
  local cargo_bin="${CARGO_HOME:-${HOME:?}/.cargo}/bin/tansu"
  if _tansu_find "$cargo_bin"; then
    return 0
  fi
  if pgrep -f 'cargo install tansu' >/dev/null 2>&1; then
    log "another 'cargo install tansu' is running; waiting for it to finish"
    while pgrep -f 'cargo install tansu' >/dev/null 2>&1; do
      sleep 5
    done
    _tansu_find "$cargo_bin" && return 0
  fi
  ensure_cargo
  log "installing tansu $SLIPWAY_TANSU_VERSION with cargo: this takes about 9 minutes, once per machine"
  cargo install tansu --version "$SLIPWAY_TANSU_VERSION" --locked --features dynostore
  _tansu_find "$cargo_bin" || die "cargo install tansu finished but no tansu binary was found"
}

_tansu_find() {
  if command -v tansu >/dev/null 2>&1; then
    TANSU_BIN=$(command -v tansu)
  elif [[ -x $1 ]]; then
    TANSU_BIN=$1
  else
    return 1
  fi
  export TANSU_BIN
  log "Tansu: $TANSU_BIN"
}

# Start a Tansu broker on 127.0.0.1:PORT with in-memory storage (topics and offsets live as long
# as the process), detached (see spawn_detached), logging to LOGFILE; its pid goes to PIDFILE
# (default: LOGFILE with .pid instead of .log). Both listener
# and advertised URL are set: Tansu's default listener is 0.0.0.0:9092, and clients connect to the
# advertised address after bootstrap. A broker from an earlier call that is still alive on the
# same port is reused.
start_tansu() {
  local port=$1 logfile=$2 pidfile=${3:-${2%.log}.pid} pid url
  [[ -n ${TANSU_BIN:-} ]] || ensure_tansu
  url="tcp://127.0.0.1:$port"
  if pid=$(pidfile_pid "$pidfile"); then
    if port_open 127.0.0.1 "$port"; then
      log "Tansu already running on 127.0.0.1:$port (pid $pid, reusing it)"
      return 0
    fi
    log "Tansu (pid $pid) is not listening on $port: restarting it"
    stop_pidfile "$pidfile"
  fi
  ! port_open 127.0.0.1 "$port" || die "port $port is already in use; pick another Kafka port"
  # Tansu also reads its settings from the environment and from a .env file in its working
  # directory (dotenv): run it in its log directory, and drop SCHEMA_REGISTRY, which would turn on
  # message validation. Flags win over the other variables.
  spawn_detached "$pidfile" "$logfile" env -C "$(dirname "$logfile")" -u SCHEMA_REGISTRY \
    "$TANSU_BIN" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/
  pid=$SPAWNED_PID
  if ! wait_port 127.0.0.1 "$port" 30 "$pid"; then
    tail -n 30 "$logfile" >&2 || true
    stop_pidfile "$pidfile"
    die "Tansu did not start (log: $logfile)"
  fi
  log "Tansu started on 127.0.0.1:$port (pid $pid)"
}

# ---------------------------------------------------------------------------------------------
# OCI image registry (Docker Distribution, Debian's docker-registry)
# ---------------------------------------------------------------------------------------------

# The builder pushes images through the OCI distribution API; Debian's docker-registry serves it
# on loopback with filesystem storage, without Docker.
ensure_oci_registry() {
  command -v docker-registry >/dev/null 2>&1 || apt_install docker-registry
}

# Start a registry on 127.0.0.1:PORT storing under DIR (created), logging to LOGFILE, pid in
# PIDFILE. Plain HTTP on loopback only; no auth (the deployment in front of it adds that).
start_oci_registry() {
  local port=$1 dir=$2 logfile=$3 pidfile=$4 pid
  if pid=$(pidfile_pid "$pidfile") && port_open 127.0.0.1 "$port"; then
    log "image registry already running on 127.0.0.1:$port (pid $pid, reusing it)"
    return 0
  fi
  stop_pidfile "$pidfile"
  ! port_open 127.0.0.1 "$port" || die "port $port is already in use; pick another registry port"
  mkdir -p "$dir/storage"
  cat >"$dir/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CONF
  spawn_detached "$pidfile" "$logfile" docker-registry serve "$dir/config.yml"
  pid=$SPAWNED_PID
  if ! wait_port 127.0.0.1 "$port" 30 "$pid"; then
    tail -n 30 "$logfile" >&2 || true
    stop_pidfile "$pidfile"
    die "the image registry did not start (log: $logfile)"
  fi
  log "image registry started on 127.0.0.1:$port (pid $pid)"
}
