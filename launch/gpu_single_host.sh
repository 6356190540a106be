#!/usr/bin/env bash
# Run optical-jax on the GPUs of one host: one process drives all local GPUs (no jax.distributed).
#
# Sets XLA GPU flags for jax 0.10 (collectives overlapped with compute), pins the GPU count and
# prints the resolved command before running it. `--dry-run` prints every command and runs nothing.
# Usage: launch/gpu_single_host.sh --help, examples in launch/README.md.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly JAX_CUDA_PIN='jax[cuda12]==0.10.2'
# latency_hiding_scheduler: XLA schedules the gradient all-reduces to overlap with the backward pass.
# all_reduce_combine_threshold_bytes: fuse per-layer gradient all-reduces into fewer, larger NCCL calls.
readonly GPU_XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_all_reduce_combine_threshold_bytes=134217728'

usage() {
  cat <<'EOF'
Usage: launch/gpu_single_host.sh [options] [-- OVERRIDES...]

Options:
  --gpus N             use GPUs 0..N-1 (sets CUDA_VISIBLE_DEVICES and, unless an override sets the
                       mesh, --config.mesh.data=-1 so the data axis fills the N GPUs); default: all
  --config PATH[:ARG]  config file (default configs/gpu_8xh100.py)
  --workdir DIR        run directory; rerunning on the same DIR resumes (default runs/<config name>)
  --task TASK          train (default) or precompute-teacher
  --venv DIR           virtualenv holding optical-jax (default .venv in the repo)
  --install            first create the venv if missing and pip install -e . "jax[cuda12]==0.10.2"
  --dry-run            print every command, run nothing
  -h, --help           this help

Relative paths (--config, --workdir) are taken from the repo root: the script runs from there.
Environment: XLA_FLAGS is appended after this script's flags (later flags win);
XLA_PYTHON_CLIENT_MEM_FRACTION defaults to 0.9 (jax's default 0.75 wastes 20 GB of an H100);
OPTICAL_JAX_DISTRIBUTED=0 keeps optical-jax single-process even inside a SLURM allocation.
Arguments after `--` go to optical-jax unchanged, e.g. -- --config.train.steps=100
EOF
}

die() { echo "gpu_single_host.sh: $*" >&2; exit 2; }

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

run_cmd() {
  echo "+ $(render "$@")"
  if [[ $dry_run == 0 ]]; then "$@"; fi
}

gpus=''
config='configs/gpu_8xh100.py'
workdir=''
task='train'
venv="$REPO_ROOT/.venv"
install=0
dry_run=0
overrides=()

set_option() {
  case $1 in
    --gpus) gpus=$2 ;;
    --config) config=$2 ;;
    --workdir) workdir=$2 ;;
    --task) task=$2 ;;
    --venv) venv=$2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
}

while (($# > 0)); do
  case $1 in
    --) shift; overrides=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --install) install=1 ;;
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

[[ $task == train || $task == precompute-teacher ]] || die "--task must be train or precompute-teacher, got '$task'"
cd "$REPO_ROOT"
[[ -f ${config%%:*} ]] || die "config file not found: ${config%%:*}"
if [[ -z $workdir ]]; then
  workdir="runs/$(basename "${config%%:*}" .py)"
fi
if [[ $dry_run == 1 ]]; then echo "# dry run: printing commands, running nothing"; fi

if [[ $install == 1 ]]; then
  if [[ ! -x $venv/bin/python ]]; then run_cmd "${PYTHON:-python3}" -m venv "$venv"; fi
  run_cmd "$venv/bin/pip" install -q -U pip
  run_cmd "$venv/bin/pip" install -e "$REPO_ROOT" "$JAX_CUDA_PIN"
fi
if [[ $dry_run == 0 && ! -x $venv/bin/optical-jax ]]; then
  die "no $venv/bin/optical-jax: rerun with --install (or point --venv at an environment that has it)"
fi

env_vars=(
  "XLA_FLAGS=$GPU_XLA_FLAGS${XLA_FLAGS:+ $XLA_FLAGS}"
  "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
  'OPTICAL_JAX_DISTRIBUTED=0'
)
mesh=()
if [[ -n $gpus ]]; then
  [[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive number, got '$gpus'"
  env_vars+=("CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus - 1)))")
  if [[ " ${overrides[*]-} " != *" --config.mesh."* ]]; then mesh=(--config.mesh.data=-1); fi
fi

run_cmd env "${env_vars[@]}" "$venv/bin/optical-jax" "$task" --config "$config" --workdir "$workdir" \
  ${mesh[@]+"${mesh[@]}"} ${overrides[@]+"${overrides[@]}"}
