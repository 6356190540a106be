#!/usr/bin/env bash
# Create, set up, run and tear down optical-jax on a Cloud TPU VM slice (one host or a whole pod).
#
# Every command is a gcloud call; `--dry-run` prints them all and runs nothing. `run` starts the same
# command on every worker at once (ssh --worker=all) with OPTICAL_JAX_DISTRIBUTED=1, detached with
# nohup so a dropped ssh session does not kill a pod job; each worker logs to its own
# ~/optical_jax_logs/. Usage: launch/tpu_vm.sh --help, examples in launch/README.md.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly JAX_TPU_PIN='jax[tpu]==0.10.2'
readonly PYTHON_REMOTE='python3.11'   # pyproject needs >= 3.11; TPU images ship Ubuntu 22.04 (3.10)
readonly SRC_REMOTE='optical_jax-src.tar.gz'   # relative to the workers' home directory

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE [options] [-- OVERRIDES...]

Commands:
  create   create the slice (gcloud compute tpus tpu-vm create)
  setup    copy this checkout to every worker (~/optical_jax), create ~/optical_jax_venv with
           Python 3.11 if missing, pip install -e . "jax[tpu]==0.10.2"; rerun after code changes
  run      start `optical-jax TASK` on every worker with OPTICAL_JAX_DISTRIBUTED=1, detached (nohup);
           each worker logs to ~/optical_jax_logs/TASK-<UTC time>.log (latest.log points to it)
  logs     print the end of one worker's latest log
  stop     send SIGTERM to optical-jax on every worker (it checkpoints and exits); the slice keeps
           running and billing. --vm also stops the VM (single-host slices only: pods cannot be
           stopped, only deleted)
  delete   delete the slice (gcloud asks for confirmation unless --yes)

Options:
  --name NAME          TPU name (default: $TPU_NAME)
  --zone ZONE          zone (default: $TPU_ZONE)
  --project PROJECT    GCP project (default: gcloud's configured project)
  --accelerator TYPE   create: e.g. v5litepod-256, v4-32
  --version VERSION    create: TPU software version; default from the accelerator:
                       v5litepod-* v2-alpha-tpuv5-lite, v5p-* v2-alpha-tpuv5, v6e-* v2-alpha-tpuv6e,
                       others tpu-ubuntu2204-base
  --spot               create: spot capacity (can be preempted; rerunning `run` resumes)
  --git URL            setup: git clone/fetch URL on the workers instead of copying this checkout
  --git-ref REF        setup: what to check out with --git (default origin/HEAD)
  --config PATH[:ARG]  run: config, relative to the repo root (default configs/tpu_v5e_256.py)
  --workdir DIR        run: run directory shared by all workers, normally gs://BUCKET/... (required)
  --task TASK          run: train (default) or precompute-teacher
  --foreground         run: stay attached and stream every worker's output (short runs only)
  --worker N           logs: which worker (default 0)
  --lines N            logs: how many lines (default 50)
  --vm                 stop: also stop the VM (single-host slices)
  --yes                delete: do not ask
  --dry-run            print every command, run nothing
  -h, --help           this help

Arguments after `--` go to optical-jax unchanged, e.g. -- --config.train.steps=100
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
warn() { echo "tpu_vm.sh: warning: $*" >&2; }

# Shell-quote one word only when needed, so printed commands stay readable and copy-pasteable.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

render() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# Print the resolved command, then run it unless this is a dry run.
run_cmd() {
  echo "+ $(render "$@")"
  if [[ $dry_run == 0 ]]; then "$@"; fi
}

default_version() {
  case $1 in
    v5litepod-*) echo 'v2-alpha-tpuv5-lite' ;;
    v5p-*) echo 'v2-alpha-tpuv5' ;;
    v6e-*) echo 'v2-alpha-tpuv6e' ;;
    *) echo 'tpu-ubuntu2204-base' ;;
  esac
}

command=${1:-}
case $command in
  -h | --help) usage; exit 0 ;;
  create | setup | run | logs | stop | delete) shift ;;
  '') usage >&2; exit 2 ;;
  *) die "unknown command '$command' (create, setup, run, logs, stop, delete; see --help)" ;;
esac

name=${TPU_NAME:-}
zone=${TPU_ZONE:-}
project=''
accelerator=''
version=''
git_source=''
git_ref='origin/HEAD'
config='configs/tpu_v5e_256.py'
workdir=''
task='train'
worker='0'
lines='50'
spot=0
foreground=0
stop_vm=0
yes=0
dry_run=0
overrides=()

set_option() {
  case $1 in
    --name) name=$2 ;;
    --zone) zone=$2 ;;
    --project) project=$2 ;;
    --accelerator) accelerator=$2 ;;
    --version) version=$2 ;;
    --git) git_source=$2 ;;
    --git-ref) git_ref=$2 ;;
    --config) config=$2 ;;
    --workdir) workdir=$2 ;;
    --task) task=$2 ;;
    --worker) worker=$2 ;;
    --lines) lines=$2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
}

while (($# > 0)); do
  case $1 in
    --) shift; overrides=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --spot) spot=1 ;;
    --foreground) foreground=1 ;;
    --vm) stop_vm=1 ;;
    --yes) yes=1 ;;
    --*=*) set_option "${1%%=*}" "${1#*=}" ;;
    --*)
      (($# >= 2)) || die "$1 needs a value"
      set_option "$1" "$2"
      shift
      ;;
    *) die "unexpected argument '$1' (optical-jax overrides go after --)" ;;
  esac
  shift
done

[[ -n $name ]] || die "$command needs --name (or TPU_NAME)"
[[ -n $zone ]] || die "$command needs --zone (or TPU_ZONE)"
location=("--zone=$zone")
if [[ -n $project ]]; then location+=("--project=$project"); fi
tpu=(gcloud compute tpus tpu-vm)
if [[ $dry_run == 1 ]]; then echo "# dry run: printing commands, running nothing"; fi

# Remote shell: statements are single-quoted on purpose ($HOME, $(hostname) expand on the workers)
# and joined with "; " into one ssh --command.
join_statements() {
  local out="" statement
  for statement in "$@"; do out+="${out:+; }$statement"; done
  printf '%s' "$out"
}

# shellcheck disable=SC2016
readonly PIDFILE='"$HOME/optical_jax_logs/optical-jax.pid"'
# The pid file alone could name a recycled pid: also check that the process is optical-jax.
# shellcheck disable=SC2016
readonly RUNNING='running() { [ -f '"$PIDFILE"' ] && grep -qa optical-jax "/proc/$(cat '"$PIDFILE"')/cmdline" 2>/dev/null; }'

do_create() {
  [[ -n $accelerator ]] || die "create needs --accelerator (e.g. v5litepod-256, v4-32)"
  local args=("${tpu[@]}" create "$name" "${location[@]}" "--accelerator-type=$accelerator"
    "--version=${version:-$(default_version "$accelerator")}")
  if [[ $spot == 1 ]]; then args+=(--spot); fi
  run_cmd "${args[@]}"
}

# shellcheck disable=SC2016
do_setup() {
  local fetch
  if [[ -n $git_source ]]; then
    fetch=(
      'if [ -d "$HOME/optical_jax/.git" ]; then git -C "$HOME/optical_jax" fetch -q origin'
      'else rm -rf "$HOME/optical_jax"; git clone -q '"$(quote "$git_source")"' "$HOME/optical_jax"; fi'
      'git -C "$HOME/optical_jax" checkout -q --detach '"$(quote "$git_ref")"
    )
  else
    # A tarball, not scp --recurse of the tree: one file per worker, no .venv*/.git/runs, and the
    # remote tree is replaced whole, so deleted files do not linger.
    local tarball="${TMPDIR:-/tmp}/optical_jax-src-$name.tar.gz"
    run_cmd tar -czf "$tarball" --exclude='./.venv*' --exclude=./.git --exclude=./runs --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=./.pytest_cache --exclude=./.hypothesis -C "$REPO_ROOT" .
    run_cmd "${tpu[@]}" scp "$tarball" "$name:$SRC_REMOTE" --worker=all "${location[@]}"
    fetch=(
      'rm -rf "$HOME/optical_jax"'
      'mkdir -p "$HOME/optical_jax"'
      'tar -xzf "$HOME/'"$SRC_REMOTE"'" -C "$HOME/optical_jax"'
    )
  fi
  # Idempotent: Python and the venv are only created when missing; pip skips what is installed.
  local apt='sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q'
  local remote
  remote=$(join_statements 'set -e' "${fetch[@]}" \
    "if ! command -v $PYTHON_REMOTE >/dev/null 2>&1; then $apt update" \
    "$apt install -y $PYTHON_REMOTE $PYTHON_REMOTE-venv; fi" \
    '[ -x "$HOME/optical_jax_venv/bin/python" ] || '"$PYTHON_REMOTE"' -m venv "$HOME/optical_jax_venv"' \
    '"$HOME/optical_jax_venv/bin/pip" install -q -U pip' \
    '"$HOME/optical_jax_venv/bin/pip" install -q -e "$HOME/optical_jax[gcs]" '"$(quote "$JAX_TPU_PIN")" \
    'echo "$(hostname): optical_jax installed"')
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker=all "--command=$remote"
}

# shellcheck disable=SC2016
do_run() {
  [[ -n $workdir ]] || die "run needs --workdir (a gs://BUCKET/... directory all workers share)"
  [[ $task == train || $task == precompute-teacher ]] || die "--task must be train or precompute-teacher, got '$task'"
  [[ $config != /* ]] || die "--config must be relative to the repo root (the workers have their own copy): $config"
  [[ -f $REPO_ROOT/${config%%:*} ]] || die "config file not found: ${config%%:*}"
  if [[ $workdir != gs://* ]]; then
    warn "--workdir $workdir is not on GCS: on a multi-host slice every worker needs the same directory"
  fi
  local log job remote
  log="$task-$(date -u +%Y%m%d-%H%M%S).log"
  job='OPTICAL_JAX_DISTRIBUTED=1 "$HOME/optical_jax_venv/bin/optical-jax" '"$(render "$task" --config "$config" \
    --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})"
  if [[ $foreground == 1 ]]; then
    remote=$(join_statements 'set -e -o pipefail' 'cd "$HOME/optical_jax"' 'mkdir -p "$HOME/optical_jax_logs"' \
      "$job"' 2>&1 | tee "$HOME/optical_jax_logs/'"$log"'"')
  else
    # nohup + closed stdin: the job outlives the ssh session; its pid is kept for `stop`.
    remote=$(join_statements 'set -e' 'cd "$HOME/optical_jax"' 'mkdir -p "$HOME/optical_jax_logs"' "$RUNNING" \
      'if running; then echo "$(hostname): optical-jax already running (pid $(cat '"$PIDFILE"')), stop it first" >&2; exit 1; fi' \
      "${job/=1 /=1 nohup }"' > "$HOME/optical_jax_logs/'"$log"'" 2>&1 < /dev/null & echo $! > '"$PIDFILE" \
      'ln -sfn '"$log"' "$HOME/optical_jax_logs/latest.log"' \
      'echo "$(hostname): started pid $(cat '"$PIDFILE"'), log ~/optical_jax_logs/'"$log"'"')
  fi
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker=all "--command=$remote"
  if [[ $foreground == 0 ]]; then
    echo "# follow worker 0: launch/tpu_vm.sh logs --name $(quote "$name") --zone $(quote "$zone")"
  fi
}

# shellcheck disable=SC2016
do_logs() {
  [[ $lines =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$lines'"
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" "--worker=$worker" \
    "--command=tail -n $lines "'"$HOME/optical_jax_logs/latest.log"'
}

# shellcheck disable=SC2016
do_stop() {
  local remote
  remote=$(join_statements "$RUNNING" \
    'if running; then kill -TERM "$(cat '"$PIDFILE"')"; echo "$(hostname): sent SIGTERM to optical-jax (pid $(cat '"$PIDFILE"'))"' \
    'else echo "$(hostname): optical-jax not running"; fi')
  run_cmd "${tpu[@]}" ssh "$name" "${location[@]}" --worker=all "--command=$remote"
  if [[ $stop_vm == 1 ]]; then run_cmd "${tpu[@]}" stop "$name" "${location[@]}"; fi
}

do_delete() {
  local args=("${tpu[@]}" delete "$name" "${location[@]}")
  if [[ $yes == 1 ]]; then args+=(--quiet); fi
  run_cmd "${args[@]}"
}

"do_$command"
