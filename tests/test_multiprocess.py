"""Two local JAX processes (2 simulated CPU devices each, gloo collectives) train configs/tiny.py like one process
with as many devices, and run `optical-jax bench` as one.

The multi-process tests start real `python -m optical_jax` processes that join through `jax.distributed` on
a free localhost port (OPTICAL_JAX_* environment, as the launch/ scripts set it on real hosts). Their helpers and
the shared uninterrupted 2-process run are also used by tests/test_preemption.py.
"""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from optical_jax import distributed
from optical_jax.errors import UserError


def multiprocess(test):
  """Marks a test that starts several JAX processes (slow; CI runs it)."""
  return pytest.mark.multiprocess(pytest.mark.slow(test))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 50
ARGS = (f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=10", "--config.train.log_every=5",
        "--config.data.num_examples=256")
TIMEOUT_S = 300
# CPU devices per process: several, so each process also reduces over its own devices. 2 rather than 4: on a 2-core
# machine a 2-process step then takes ~130 ms instead of ~400 ms (every collective waits for each local device).
DEVICES = 2
_CACHE = {}


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent jax compilation cache for every process these tests start: later launches skip compiling.

  conftest.py's suite-wide cache when it is on (shared with the other tests, workers and runs), else a tmp dir."""
  if "dir" not in _CACHE:
    _CACHE["dir"] = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax_cache"))
  return _CACHE["dir"]


def _env(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith("OPTICAL_JAX_")}
  env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu", "CI": "1",
              "OPTICAL_JAX_DISTRIBUTED": "0", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra})
  if "dir" in _CACHE:
    env["JAX_COMPILATION_CACHE_DIR"] = _CACHE["dir"]
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_command(*argv: str, num_processes: int = 2, devices: int = DEVICES, env: dict[str, str] | None = None,
                   per_process_args: dict[int, tuple[str, ...]] | None = None) -> list[subprocess.Popen]:
  """Starts `optical-jax ARGV...` as `num_processes` processes of one jax.distributed job (`devices` CPU devices
  each), joined through the OPTICAL_JAX_* environment (no --distributed flag needed)."""
  port = _free_port()
  procs = []
  for i in range(num_processes):
    process_env = _env(devices, OPTICAL_JAX_DISTRIBUTED="1", OPTICAL_JAX_COORDINATOR=f"127.0.0.1:{port}",
                       OPTICAL_JAX_NUM_PROCESSES=str(num_processes), OPTICAL_JAX_PROCESS_ID=str(i), **(env or {}))
    cmd = [sys.executable, "-m", "optical_jax", *argv, *(per_process_args or {}).get(i, ())]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=process_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  return procs


def launch(workdir, *args: str, num_processes: int = 2, env: dict[str, str] | None = None,
           per_process_args: dict[int, tuple[str, ...]] | None = None) -> list[subprocess.Popen]:
  """Starts `optical-jax train` as `num_processes` processes of one jax.distributed job (DEVICES CPU devices each)."""
  return launch_command("train", "--config", "configs/tiny.py", "--workdir", str(workdir), *args,
                        num_processes=num_processes, env=env, per_process_args=per_process_args)


def finish(procs, timeout: float = TIMEOUT_S) -> list[tuple[int, str, str]]:
  """Waits for every process (killing all on timeout); returns (exit code, stdout, stderr) per process."""
  deadline = time.time() + timeout
  results = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError(f"process did not finish within {timeout} s") from None
    results.append((p.returncode, out, err))
  return results


def check_ok(results):
  for i, (code, out, err) in enumerate(results):
    assert code == 0, f"process {i} exited {code}\n{out}\n{err[-4000:]}"


def metrics_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def wait_for_checkpoint(workdir, procs, step: int, *, started: bool = False):
  """Waits until checkpoint `step` is complete (or, with `started`, until its save has begun)."""
  directory = workdir / "checkpoints"
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline:
    if (directory / str(step)).exists():
      return
    if started and directory.exists() and any(p.name.startswith(f"{step}.") for p in directory.iterdir()):
      return  # orbax's temporary directory: the loop has reached `step`.
    for i, p in enumerate(procs):
      if p.poll() is not None:
        raise AssertionError(f"process {i} exited {p.returncode} early:\n{p.stderr.read()[-4000:]}")
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint {step} appeared")


def exported_weights(*workdirs_and_outs):
  """`optical-jax export` of each (workdir, out) pair, run concurrently; the model.safetensors tensors of each."""
  from safetensors.numpy import load_file
  procs = [subprocess.Popen([sys.executable, "-m", "optical_jax", "export", "--workdir", str(w), "--out", str(o)],
                            cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for w, o in workdirs_and_outs]
  for code, _, err in finish(procs):
    assert code == 0, err[-4000:]
  return [load_file(str(o / "model.safetensors")) for _, o in workdirs_and_outs]


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory):
  """An uninterrupted 2-process run of ARGS; its workdir (made once per pytest process, shared by both files)."""
  if "reference" not in _CACHE:  # Module globals, because test_preemption.py's import is a second fixture.
    workdir = tmp_path_factory.mktemp("two_process") / "run"
    check_ok(finish(launch(workdir, *ARGS)))
    _CACHE["reference"] = workdir
  return _CACHE["reference"]


@multiprocess
def test_two_processes_give_the_losses_of_one(two_process_run, tmp_path):
  one = tmp_path / "one"
  proc = subprocess.run([sys.executable, "-m", "optical_jax", "train", "--config", "configs/tiny.py", "--workdir",
                         str(one), *ARGS], cwd=REPO, env=_env(2 * DEVICES), capture_output=True, text=True,
                        timeout=TIMEOUT_S)  # one process, as many devices as the two
  assert proc.returncode == 0, proc.stderr[-4000:]
  single, multi = metrics_rows(one), metrics_rows(two_process_run)
  assert [r["step"] for r in multi] == [r["step"] for r in single] == list(range(5, STEPS + 1, 5))
  np.testing.assert_allclose([r["loss"] for r in multi], [r["loss"] for r in single], rtol=0, atol=1e-5)
  assert single[-1]["loss"] < 0.9 * single[0]["loss"]  # It trained, so equal losses are not trivially equal.


@multiprocess
def test_seed_comes_from_process_0_and_other_differences_are_user_errors(tmp_path):
  results = finish(launch(tmp_path / "mismatch", *ARGS,
                          per_process_args={1: ("--config.seed=5", "--config.train.lr=0.1")}))
  for code, _, err in results:
    assert code == 2, err[-4000:]
    assert "processes [1] run a different config from process 0" in err
  assert "config.seed 5 differs from process 0's; using 0" in results[1][2]


@multiprocess
def test_bench_runs_as_one_global_step_on_two_processes(tmp_path):
  """2 processes x 2 CPU devices: one global step timed; process 0 alone prints and writes the JSON and sweep files."""
  out = tmp_path / "bench.json"
  # --distributed as a user would type it (the environment gives the coordinates); tiny knobs and a one-point sweep
  # (configs/tiny.py has no bench section: the overrides reach the defaults).
  results = finish(launch_command(
      "bench", "--distributed", "--config", "configs/tiny.py", "--steps", "2", "--json", str(out), "--sweep",
      "--config.bench.warmup_steps=1", "--config.bench.ot_repeats=1", "--config.bench.num_batches=2",
      "--config.bench.sweep_batch=(32,)", "--config.bench.sweep_student_len=(16,)",
      "--config.bench.sweep_iterations=(10,)", "--config.bench.sweep_steps=1", devices=2))
  check_ok(results)
  written = json.loads(out.read_text())
  env = written["environment"]
  assert (env["num_processes"], env["num_devices"], env["local_devices"]) == (2, 4, 2)
  assert env["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert written["recompiles"] == 0 and written["timed_steps"] == 2 and written["losses_finite"]
  assert written["config"]["batch"] == 32 and 0.0 <= written["ot_share"] <= 1.0
  assert written["padded_tokens_per_s"] > 0 and np.isfinite(written["ot_loss"]["loss"])
  assert written["peak_devices_counted"] == 2  # one CPU host per process
  rows = written["sweep"]["rows"]
  assert [(r["batch"], r["student_len"], r["iterations"], r["recompiles"]) for r in rows] == [(32, 16, 10, 0)]
  assert [r[1].count("optical-jax bench:") for r in results] == [1, 0]  # the report: process 0 only
  assert [r[1].count("wrote ") for r in results] == [4, 0]
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "bench.json", "bench_ot_share.png", "bench_sweep.csv", "bench_throughput_mfu.png"]


@multiprocess
def test_bench_compare_refuses_several_processes(tmp_path):
  results = finish(launch_command("bench", "--config", "configs/tiny.py", "--compare", "--json",
                                  str(tmp_path / "b.json"), devices=1))
  for code, out, err in results:
    assert code == 2, err[-4000:]
    lines = [line for line in err.splitlines() if line.startswith("optical-jax: error:")]
    assert len(lines) == 1 and "--compare runs the single-process PyTorch + POT peer" in lines[0], err[-2000:]
  assert not (tmp_path / "b.json").exists()


def test_initialize_arguments_from_the_environment(monkeypatch):
  for name in ("OPTICAL_JAX_COORDINATOR", "OPTICAL_JAX_NUM_PROCESSES", "OPTICAL_JAX_PROCESS_ID",
               "OPTICAL_JAX_HEARTBEAT_TIMEOUT", "OPTICAL_JAX_INIT_TIMEOUT", "OPTICAL_JAX_SHUTDOWN_TIMEOUT"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize_kwargs() == {}
  assert distributed.heartbeat_timeout() == distributed.DEFAULT_HEARTBEAT_TIMEOUT_S
  monkeypatch.setenv("OPTICAL_JAX_COORDINATOR", "10.0.0.1:1234")
  with pytest.raises(UserError, match="OPTICAL_JAX_NUM_PROCESSES and OPTICAL_JAX_PROCESS_ID"):
    distributed.initialize_kwargs()
  monkeypatch.setenv("OPTICAL_JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("OPTICAL_JAX_PROCESS_ID", "3")
  monkeypatch.setenv("OPTICAL_JAX_HEARTBEAT_TIMEOUT", "30")
  assert distributed.initialize_kwargs() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                             "process_id": 3, "heartbeat_timeout_seconds": 30}
  assert distributed.heartbeat_timeout() == 30
  monkeypatch.setenv("OPTICAL_JAX_PROCESS_ID", "three")
  with pytest.raises(UserError, match="OPTICAL_JAX_PROCESS_ID must be an integer"):
    distributed.initialize_kwargs()


def test_not_initialized_unless_asked(monkeypatch):
  monkeypatch.setenv("OPTICAL_JAX_DISTRIBUTED", "0")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b")  # auto-detection is off
  assert distributed.maybe_initialize() is False


def test_one_process_needs_no_agreement():
  from optical_jax import config as config_lib
  config = config_lib.load_config(os.path.join(REPO, "configs", "tiny.py"))
  assert distributed.agree_on_config(config) is config
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  vote = distributed.StopVote(mesh)
  assert vote(False, 0) is False and vote(True, 1) is True  # One process: the flag counts at once.
  with pytest.raises(UserError, match="stop_vote_every"):
    distributed.StopVote(mesh, every=0)
