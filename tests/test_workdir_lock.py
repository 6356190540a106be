"""One writer per workdir (optical_jax/workdir_lock.py, wired in cli.py): a live holder is refused by name, a dead
one taken over with a warning, one on another host refused with the way out; released on exit, error and SIGTERM.
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from optical_jax import cli, workdir_lock
from optical_jax.errors import UserError
from test_multiprocess import finish, launch, multiprocess
from test_remote_storage import gcs

__all__ = ["gcs"]  # a pytest fixture, used by name

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", CI="1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lock_path(workdir):
  return workdir / workdir_lock.LOCK_NAME


def _write_lock(workdir, **fields):
  workdir.mkdir(parents=True, exist_ok=True)
  holder = {"host": socket.gethostname(), "pid": 1, "command": "train", "since": "2026-01-02T03:04:05+00:00",
            "token": "old", **fields}
  _lock_path(workdir).write_text(json.dumps(holder))
  return holder


def _dead_pid():
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def _error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  return err[0]


def _wait_for(predicate, proc, what, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"exited {proc.returncode} before {what}:\n{proc.stderr.read()[-4000:]}")
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def test_live_run_is_refused_by_name_and_its_sigterm_releases_the_lock(tmp_path, capsys):
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "optical_jax", "train", "--config", "configs/tiny.py", "--workdir",
                           str(workdir), "--config.train.steps=100000", "--config.train.checkpoint_every=100000"],
                          cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(_lock_path(workdir).exists, proc, "the lock")
    holder = json.loads(_lock_path(workdir).read_text())
    assert holder["pid"] == proc.pid and holder["command"] == "train"
    for command in ("train", "precompute-teacher"):
      assert cli.main([command, "--config", "configs/tiny.py", "--workdir", str(workdir)]) == 2
      assert _error_line(capsys) == (
          f"optical-jax: error: {workdir}: in use by `train` (host {socket.gethostname()}, pid {proc.pid}, since "
          f"{holder['since']}); wait for it or stop it")
    # In the loop, train's own SIGTERM handling saves a checkpoint and exits 0; the lock goes on the way out.
    metrics = workdir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().strip(), proc, "the first logged step")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-4000:]
  assert not _lock_path(workdir).exists()


def test_sigterm_during_start_up_ends_the_command_and_releases_the_lock(tmp_path):
  # The bitext is a FIFO: precompute-teacher blocks reading it, past the lock, until the signal comes.
  fifo = tmp_path / "pairs.tsv"
  os.mkfifo(fifo)
  workdir = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "optical_jax", "precompute-teacher", "--config",
                           "configs/tiny.py:text", "--workdir", str(workdir), f"--config.data.bitext={fifo}"],
                          cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  writer = None
  try:
    def reader_waits():
      nonlocal writer
      try:
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds once the command has opened the FIFO
      except OSError:
        return False
      return True
    _wait_for(reader_waits, proc, "the bitext to be opened")
    assert _lock_path(workdir).exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
    if writer is not None:
      os.close(writer)
  assert proc.returncode == 128 + signal.SIGTERM, err[-4000:]
  assert not _lock_path(workdir).exists()


def test_dead_holder_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = tmp_path / "run"
  old = _write_lock(workdir, pid=_dead_pid())
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    with workdir_lock.WorkdirLock(str(workdir), "precompute-teacher") as lock:
      now = json.loads(_lock_path(workdir).read_text())
      assert now["pid"] == os.getpid() and now["token"] == lock.holder["token"]
  assert f"{workdir}: taking over the lock of {workdir_lock.describe(old)}, which is no longer running" in caplog.text
  assert not _lock_path(workdir).exists()


@pytest.mark.parametrize("why", ["recycled_pid", "rebooted"])
def test_live_pid_of_another_process_or_boot_is_stale(tmp_path, caplog, why):
  # After a reboot or a container restart the old pid often belongs to some other live process (even this one).
  me = workdir_lock.WorkdirLock(str(tmp_path), "train").holder
  if why == "recycled_pid":
    _write_lock(tmp_path, pid=os.getpid(), pid_start=str(int(me["pid_start"]) - 1), boot_id=me["boot_id"])
  else:
    _write_lock(tmp_path, pid=os.getpid(), pid_start=me["pid_start"], boot_id="another-boot")
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    with workdir_lock.WorkdirLock(str(tmp_path), "train"):
      pass
  assert "which is no longer running" in caplog.text


def test_same_live_process_is_not_stale(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), "train"):
    with pytest.raises(UserError, match="in use by `train`"):
      workdir_lock.WorkdirLock(str(tmp_path), "train").acquire()


def test_holder_on_another_host_is_refused_with_the_way_out(tmp_path, capsys):
  holder = _write_lock(tmp_path, host="tpu-worker-7", pid=4242)
  assert cli.main(["train", "--config", "configs/tiny.py", "--workdir", str(tmp_path)]) == 2
  assert _error_line(capsys) == (
      f"optical-jax: error: {tmp_path}: in use by `train` (host tpu-worker-7, pid 4242, since {holder['since']}), on "
      f"another host, so this one cannot tell whether it still runs; if you are sure it has stopped, delete "
      f"{_lock_path(tmp_path)}")
  assert json.loads(_lock_path(tmp_path).read_text())["token"] == "old"  # untouched


def test_unreadable_lock_is_refused(tmp_path):
  _lock_path(tmp_path).write_text("{not json")
  with pytest.raises(UserError, match=r"cannot read its lock .*; if no run is using this workdir, delete"):
    workdir_lock.WorkdirLock(str(tmp_path), "train").acquire()


def test_racing_takeovers_of_one_stale_lock_leave_the_winner_alone(tmp_path):
  stale = _write_lock(tmp_path, pid=_dead_pid())
  winner = workdir_lock.WorkdirLock(str(tmp_path), "train")
  winner.acquire()
  # The loser read the same stale lock before the winner replaced it, and now moves the winner's lock aside.
  loser = workdir_lock.WorkdirLock(str(tmp_path), "train")
  loser._take_over_local(stale)  # pylint: disable=protected-access
  assert json.loads(_lock_path(tmp_path).read_text())["token"] == winner.holder["token"]
  with pytest.raises(UserError, match="in use by `train`"):
    loser.acquire()
  winner.release()
  assert not _lock_path(tmp_path).exists() and not list(tmp_path.glob(".optical_jax.lock*"))


def test_released_after_a_failed_command(tmp_path, capsys):
  assert cli.main(["train", "--config", "configs/tiny.py", "--workdir", str(tmp_path), "--config.train.nope=1"]) == 2
  assert "train.nope" in _error_line(capsys)
  assert not _lock_path(tmp_path).exists()


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), "train")
  lock.acquire()
  _write_lock(tmp_path, token="someone-else")
  lock.release()
  assert json.loads(_lock_path(tmp_path).read_text())["token"] == "someone-else"


def test_gcs_workdir_best_effort(gcs, caplog):
  workdir = "gs://bucket/run"
  with workdir_lock.WorkdirLock(workdir, "train") as lock:
    assert json.loads((gcs / "bucket/run" / workdir_lock.LOCK_NAME).read_text())["token"] == lock.holder["token"]
    with pytest.raises(UserError, match=rf"^{workdir}: in use by `train` \(host .*, pid {os.getpid()}, since .*\); "
                                        "wait for it or stop it$"):
      workdir_lock.WorkdirLock(workdir, "precompute-teacher").acquire()
  assert not (gcs / "bucket/run" / workdir_lock.LOCK_NAME).exists()
  old = _write_lock(gcs / "bucket/run", pid=_dead_pid())
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    with workdir_lock.WorkdirLock(workdir, "train"):
      pass
  assert f"{workdir}: taking over the lock of {workdir_lock.describe(old)}, which is no longer running" in caplog.text
  _write_lock(gcs / "bucket/run", host="elsewhere")
  with pytest.raises(UserError, match=f"on another host, .* delete {workdir}/{workdir_lock.LOCK_NAME}$"):
    workdir_lock.WorkdirLock(workdir, "train").acquire()


def test_one_tuple_names_the_locking_commands():
  assert cli.LOCKING_COMMANDS == ("train", "precompute-teacher", "pretrain")


@multiprocess
def test_on_a_pod_process_0_speaks_for_all(tmp_path):
  """Two processes of one jax.distributed run: process 0 is refused by name, process 1 stops with it, untouched."""
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys; from optical_jax import workdir_lock\n"
      f"with workdir_lock.WorkdirLock({str(tmp_path)!r}, 'precompute-teacher'):\n"
      "  print('held', flush=True); sys.stdin.read()")], cwd=REPO, env=ENV, stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    since = json.loads(_lock_path(tmp_path).read_text())["since"]
    (code0, _, err0), (code1, _, err1) = finish(launch(tmp_path, "--config.train.steps=2"), timeout=300)
  finally:
    holder.communicate(input="", timeout=60)
  assert code0 == 2 and err0.strip().splitlines()[-1] == (
      f"optical-jax: error: {tmp_path}: in use by `precompute-teacher` (host {socket.gethostname()}, pid "
      f"{holder.pid}, since {since}); wait for it or stop it"), err0[-4000:]
  assert code1 == 2 and err1.strip().splitlines()[-1] == (
      f"optical-jax: error: {tmp_path}: process 0 of this run could not take the workdir's lock (see its error)"), \
      err1[-4000:]
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # the holder released it; the refused run wrote nothing


def test_release_all_frees_locks_an_os_exit_would_leave(tmp_path):
  """distributed.exit_now ends with os._exit, skipping `with` exits: it calls release_all first."""
  from optical_jax import workdir_lock
  lock = workdir_lock.WorkdirLock(str(tmp_path), "train")
  lock.acquire()
  assert (tmp_path / workdir_lock.LOCK_NAME).exists()
  workdir_lock.release_all()
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
  lock.release()  # a later release is a no-op
