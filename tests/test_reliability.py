"""What a trusted trainer promises when things break: unreadable checkpoints, a full disk, a permission error.

A corrupted newest checkpoint: a warning names it, training resumes from the older one and ends where an
uninterrupted run ends. None readable: exit 2 naming the directory, nothing moved. A failed write while saving a
checkpoint or a teacher-store shard: exit 1 with one line naming the path and the cause, the traceback in
WORKDIR/logs, and the rerun resumes from what was saved before. Most runs are in-process (cli.main) on
configs/tiny.py; the full-disk case runs as a real process, whose whole stderr is checked.
"""
import errno
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils.epath import backend as epath_backend

from optical_jax import checkpointing, cli
from optical_jax.data import teacher_store
from test_multiprocess import multiprocess
from test_remote_storage import gcs, _state

__all__ = ["gcs"]  # a pytest fixture, used by name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", CI="1")
TRAIN = ["--config", "configs/tiny.py", "--config.train.steps=20", "--config.train.checkpoint_every=10",
         "--config.train.log_every=5", "--config.data.num_examples=256"]
TRACEBACK_FILE = r" \(full traceback: (?P<log>.+/logs/error-\d{8}-\d{6}(-\d+)?\.log)\)$"


@pytest.fixture(autouse=True)
def _no_progress_bar(monkeypatch):
  monkeypatch.setenv("CI", "1")
  monkeypatch.delenv("OPTICAL_JAX_TRACEBACK", raising=False)


def _train(workdir, capsys, *extra):
  code = cli.main(["train", "--workdir", str(workdir), *TRAIN, *extra])
  out, err = capsys.readouterr()
  return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def _error_line(err):
  lines = err.strip().splitlines()
  assert len(lines) == 1, lines
  return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 20-step run that kept checkpoints 10 and 20, and its step-20 params."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  assert cli.main(["train", "--workdir", str(workdir), *TRAIN]) == 0
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20"]
  return workdir, _params(workdir, 20)


def _params(workdir, step):
  """The params of checkpoint `step`, read with orbax directly (no abstract state needed)."""
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return jax.tree.map(np.asarray, restored.state["params"])


def _assert_same_params(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
  for (key, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(key))


def _copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


# The ways a committed step can be damaged afterwards; each must be noticed by the restore.
DAMAGE = {
    "truncated_manifest": lambda step: _truncate(step / "state" / "manifest.ocdbt"),
    "deleted_array_data": lambda step: [p.unlink() for p in (step / "state" / "d").iterdir()],
    "truncated_array_data": lambda step: [_truncate(p) for p in (step / "state" / "ocdbt.process_0" / "d").iterdir()],
    "deleted_metadata": lambda step: (step / "meta" / "metadata").unlink(),
}


def test_corrupted_newest_checkpoint_falls_back_and_training_ends_as_uninterrupted(trained, tmp_path, capsys, caplog):
  workdir = _copy(trained, tmp_path)
  DAMAGE["truncated_manifest"](workdir / "checkpoints" / "20")
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    code, summary, err = _train(workdir, capsys)
  assert code == 0, err
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "optical_jax"]
  assert warnings[0].startswith(f"{workdir}/checkpoints/20: unreadable checkpoint (ValueError: DATA_LOSS: "), warnings
  assert warnings[0].endswith("); trying the next older one") and "\n" not in warnings[0]
  assert warnings[1] == (f"moved the unreadable checkpoint {workdir}/checkpoints/20 aside to "
                         f"{workdir}/checkpoints/corrupt-20 (delete it once you no longer need it)")
  assert summary["start_step"] == 10 and summary["final_step"] == 20
  # The bad step is kept aside; a fresh step 20 replaced it, the same as the uninterrupted run's.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20", "corrupt-20"]
  _assert_same_params(_params(workdir, 20), trained[1])
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  # And the next run finds the new step 20.
  code, summary, err = _train(workdir, capsys)
  assert code == 0 and summary["start_step"] == 20, err


@pytest.fixture(scope="module")
def train_state(trained):
  """The (state, shardings) template train restores into, for configs/tiny.py with TRAIN's overrides."""
  from optical_jax import config as config_lib, sharding as sharding_lib, student as student_lib
  from optical_jax import train_step as train_step_lib
  config = config_lib.load_config("configs/tiny.py", [a[len("--config."):] for a in TRAIN if a.startswith("--config.")])
  mesh = sharding_lib.create_mesh(config.mesh)
  student = student_lib.build_student(config)
  return train_step_lib.create_train_state(student.module, train_step_lib.make_optimizer(config), config, mesh,
                                           jax.random.key(config.seed), init_params=student.pretrained_params)


@pytest.mark.parametrize("damage", sorted(set(DAMAGE) - {"truncated_manifest"}))
def test_each_kind_of_damage_is_noticed(trained, train_state, tmp_path, caplog, damage):
  workdir = _copy(trained, tmp_path)
  DAMAGE[damage](workdir / "checkpoints" / "20")
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints")
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    step, state, meta = checkpointer.restore_latest(*train_state)
  checkpointer.close()
  assert step == 10 and meta["step"] == 10 and int(state.step) == 10
  _assert_same_params(jax.tree.map(np.asarray, state.params), _params(workdir, 10))
  assert f"{workdir}/checkpoints/20: unreadable checkpoint (" in caplog.text
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "corrupt-20"]


def test_read_only_callers_move_nothing(trained, train_state, tmp_path):
  workdir = _copy(trained, tmp_path)
  DAMAGE["truncated_manifest"](workdir / "checkpoints" / "20")
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints")
  assert checkpointer.restore_latest(*train_state, repair=False)[0] == 10
  checkpointer.close()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20"]


def test_no_readable_checkpoint_exits_2_and_moves_nothing(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  for step in ("10", "20"):
    DAMAGE["truncated_manifest"](workdir / "checkpoints" / step)
  code, _, err = _train(workdir, capsys)
  assert code == 2
  line = _error_line(err)
  assert line.startswith(f"optical-jax: error: {workdir}/checkpoints: no checkpoint can be read (steps 20, 10; "
                         "step 20: ValueError: "), line
  assert line.endswith("To train from step 0 instead, move the directory away")
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20"]
  assert not (workdir / "logs").exists()  # a user error: no traceback file


def test_restore_latest_without_checkpoints_is_none(tmp_path):
  assert checkpointing.Checkpointer(tmp_path / "none").restore_latest(None, None) is None


def test_unreadable_checkpoint_on_gcs_is_moved_aside_and_the_step_saved_again(gcs, caplog):
  ckpt = checkpointing.Checkpointer("gs://bucket/run/checkpoints", keep=3)
  for step in (1, 2):
    ckpt.save(step, _state(step), {"step": step})
  ckpt.close()
  (gcs / "bucket/run/checkpoints/2/meta/metadata").unlink()
  target = _state(0)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  ckpt = checkpointing.Checkpointer("gs://bucket/run/checkpoints", keep=3)
  with caplog.at_level(logging.WARNING, logger="optical_jax"):
    step, state, meta = ckpt.restore_latest(target, shardings)
  assert step == 1 and meta == {"step": 1} and float(state.params["b"][0]) == 1.0
  assert "gs://bucket/run/checkpoints/2: unreadable checkpoint (FileNotFoundError: " in caplog.text
  assert sorted(os.listdir(gcs / "bucket/run/checkpoints")) == ["1", "corrupt-2"]
  ckpt.save(2, _state(2), {"step": 2})  # orbax no longer counts the bad step 2 as saved
  ckpt.close()
  assert sorted(os.listdir(gcs / "bucket/run/checkpoints")) == ["1", "2", "corrupt-2"]
  assert (gcs / "bucket/run/checkpoints/corrupt-2/state/_METADATA").exists()  # moved whole


# A real process: the whole stderr is checked, and orbax's own error logs (with tracebacks) are part of it.
_FULL_DISK = """
import errno, os, sys
from etils.epath import backend
_open = backend._OsPathBackend.open
def _open_on_a_full_disk(self, path, mode):
  # The JSON part of checkpoint 20, written by orbax's background thread: the disk fills up mid-save.
  if any(c in mode for c in "wax") and "/checkpoints/20.orbax-checkpoint-tmp/meta" in os.fspath(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
  return _open(self, path, mode)
backend._OsPathBackend.open = _open_on_a_full_disk
from optical_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_full_disk_during_a_checkpoint_save_exits_1_with_one_line_and_the_rerun_resumes(trained, tmp_path, capsys):
  script = tmp_path / "full_disk.py"
  script.write_text(_FULL_DISK)
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, str(script), "train", "--workdir", str(workdir), *TRAIN], cwd=REPO,
                        env=dict(ENV, OPTICAL_JAX_LOG="WARNING"), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-4000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
  last = proc.stderr.strip().splitlines()[-1]
  match = re.fullmatch(re.escape(f"optical-jax: error: {workdir}/checkpoints/20.orbax-checkpoint-tmp/"
                                 "meta.orbax-checkpoint-tmp/metadata: No space left on device") + TRACEBACK_FILE, last)
  assert match and match["log"].startswith(f"{workdir}/logs/"), last
  log = open(match["log"]).read()
  assert "Traceback (most recent call last)" in log and "OSError: [Errno 28] No space left on device" in log
  # Step 10 was kept; the rerun resumes there and ends where an uninterrupted run does.
  assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == ["10"]
  code, summary, err = _train(workdir, capsys)
  assert code == 0 and summary["start_step"] == 10 and summary["final_step"] == 20, err
  _assert_same_params(_params(workdir, 20), trained[1])


def test_permission_error_at_a_checkpoint_commit_names_both_paths(trained, tmp_path, capsys, monkeypatch):
  rename = epath_backend._OsPathBackend.rename  # pylint: disable=protected-access

  def rename_denied(self, path, dst):
    if os.fspath(dst).endswith("/checkpoints/20"):
      # As os.rename raises it: both names (the 4th argument is Windows' error code).
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path), None, os.fspath(dst))
    return rename(self, path, dst)

  monkeypatch.setattr(epath_backend._OsPathBackend, "rename", rename_denied)  # pylint: disable=protected-access
  workdir = tmp_path / "run"
  code, _, err = _train(workdir, capsys)
  assert code == 1
  line = _error_line(err)
  match = re.fullmatch(re.escape(f"optical-jax: error: {workdir}/checkpoints/20.orbax-checkpoint-tmp -> "
                                 f"{workdir}/checkpoints/20: Permission denied") + TRACEBACK_FILE, line)
  assert match and os.path.exists(match["log"]), line
  monkeypatch.undo()
  code, summary, err = _train(workdir, capsys)
  assert code == 0 and summary["start_step"] == 10 and summary["final_step"] == 20, err
  _assert_same_params(_params(workdir, 20), trained[1])


def _fail_with(error):
  def dispatch(args, overrides):
    raise error
  return dispatch


def test_internal_error_report(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(cli, "_dispatch", _fail_with(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y")))
  workdir = tmp_path / "run"
  workdir.mkdir()
  assert cli.main(["evaluate", "--config", "configs/tiny.py", "--workdir", str(workdir)]) == 1
  line = _error_line(capsys.readouterr().err)
  match = re.fullmatch(re.escape("optical-jax: error: /x/y: No space left on device") + TRACEBACK_FILE, line)
  assert match and match["log"].startswith(f"{workdir}/logs/error-"), line
  assert "optical-jax evaluate --config configs/tiny.py" in open(match["log"]).read()

  # OPTICAL_JAX_TRACEBACK=1: the traceback on stderr too, the one line still last.
  monkeypatch.setenv("OPTICAL_JAX_TRACEBACK", "1")
  assert cli.main(["evaluate", "--config", "configs/tiny.py", "--workdir", str(workdir)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0] == "Traceback (most recent call last):" and err[-2] == "OSError: [Errno 28] No space left on device: '/x/y'"
  assert re.fullmatch(re.escape("optical-jax: error: /x/y: No space left on device") + TRACEBACK_FILE, err[-1])
  assert len(list((workdir / "logs").iterdir())) == 2  # a second failure within the second gets its own file
  monkeypatch.delenv("OPTICAL_JAX_TRACEBACK")

  # No file names the cause: its type and first line.
  monkeypatch.setattr(cli, "_dispatch", _fail_with(RuntimeError("gloo: connection reset\nmore detail")))
  assert cli.main(["evaluate", "--config", "configs/tiny.py", "--workdir", str(workdir)]) == 1
  assert re.fullmatch(re.escape("optical-jax: error: RuntimeError: gloo: connection reset") + TRACEBACK_FILE,
                      _error_line(capsys.readouterr().err))


def test_unwritable_workdir_puts_the_traceback_in_a_temp_dir_and_says_so(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(cli, "_dispatch", _fail_with(OSError(errno.EIO, os.strerror(errno.EIO), "/x/y")))
  monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
  monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
  (tmp_path / "tmp").mkdir()
  workdir = tmp_path / "not_a_dir"
  workdir.write_text("")  # WORKDIR/logs cannot be made under a file
  assert cli.main(["evaluate", "--config", "configs/tiny.py", "--workdir", str(workdir)]) == 1
  line = _error_line(capsys.readouterr().err)
  match = re.fullmatch(re.escape("optical-jax: error: /x/y: Input/output error (full traceback: ") +
                       rf"(?P<log>{re.escape(str(tmp_path))}/tmp/optical-jax-logs/error-\d{{8}}-\d{{6}}\.log); "
                       + re.escape(f"{workdir}/logs is not writable: ") + r".+\)", line)
  assert match and os.path.exists(match["log"]), line


# ----- The teacher store: a failed shard write, then a rerun. -----

@pytest.fixture(scope="module")
def bitext(tmp_path_factory):
  rng = random.Random(0)
  words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 6))) for _ in range(200)]
  path = tmp_path_factory.mktemp("bitext") / "pairs.tsv"
  with open(path, "w") as f:
    f.write("id\tsource\ttarget\n")
    for i in range(300):
      sentence = rng.sample(words, rng.randint(2, 6))
      f.write(f"p{i}\t{' '.join(sentence)}\t{' '.join(w[::-1].upper() for w in sentence)}\n")
  return path


_SMALL_SHARDS = f"""
import runpy
_tiny = runpy.run_path({os.path.join(REPO, "configs", "tiny.py")!r})["get_config"]

def get_config(arg=None):
  config = _tiny("text")
  config.data.examples_per_shard = 64  # 300 pairs: 5 shards, so that a failure can come after some are done
  return config
"""


def _precompute(workdir, bitext):
  config = bitext.parent / "tiny_small_shards.py"
  if not config.exists():
    config.write_text(_SMALL_SHARDS)
  return cli.main(["precompute-teacher", "--config", str(config), "--workdir", str(workdir),
                   f"--config.data.bitext={bitext}"])


@pytest.fixture(scope="module")
def reference_store(bitext, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference_store")
  assert _precompute(workdir, bitext) == 0
  return workdir / "teacher_store"


class _DiskFullWriter:
  """ArrayRecordWriter that fails like the real one on a full disk, 10 records into shard 2."""
  real = teacher_store.array_record_module.ArrayRecordWriter

  def __init__(self, path, options):
    self._path, self._records, self._writer = path, 0, self.real(path, options)

  def write(self, record):
    if "-00002.array_record" in self._path and self._records == 10:
      # The real writer's words for a failed write (measured with RLIMIT_FSIZE: "File too large").
      raise RuntimeError(f"write() failed: No space left on device; writing {self._path}; at byte 65536")
    self._records += 1
    self._writer.write(record)

  def ok(self):
    return self._writer.ok()

  def close(self):
    self._writer.close()


def _full_disk_mid_shard(monkeypatch, store):
  monkeypatch.setattr(teacher_store.array_record_module, "ArrayRecordWriter", _DiskFullWriter)
  return (f"RuntimeError: write() failed: No space left on device; writing {store}/shard-p000-00002.array_record.tmp; "
          "at byte 65536")


def _full_disk_at_progress(monkeypatch, store):
  # After shard 2 is renamed into place but before the progress file records it: the shard must not count.
  real_open, commits = epath_backend._OsPathBackend.open, []  # pylint: disable=protected-access

  def open_(self, path, mode):
    if "w" in mode and os.fspath(path).endswith("progress-p000.json.tmp"):
      commits.append(path)
      if len(commits) == 3:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return real_open(self, path, mode)

  monkeypatch.setattr(epath_backend._OsPathBackend, "open", open_)  # pylint: disable=protected-access
  return f"{store}/progress-p000.json.tmp: No space left on device"


@pytest.mark.parametrize("inject", [_full_disk_mid_shard, _full_disk_at_progress], ids=["mid_shard", "at_progress"])
def test_failed_teacher_store_write_then_rerun_completes_a_verified_store(bitext, reference_store, tmp_path, capsys,
                                                                          monkeypatch, inject):
  workdir = tmp_path / "run"
  store = workdir / "teacher_store"
  cause = inject(monkeypatch, store)
  assert _precompute(workdir, bitext) == 1
  line = _error_line(capsys.readouterr().err)
  assert re.fullmatch(re.escape(f"optical-jax: error: {cause}") + TRACEBACK_FILE, line), line
  progress = json.loads((store / "progress-p000.json").read_text())
  assert [s["name"] for s in progress["shards"]] == [teacher_store.shard_name(0, i) for i in (0, 1)]
  monkeypatch.undo()

  assert _precompute(workdir, bitext) == 0, capsys.readouterr().err
  with teacher_store.TeacherStore.open(store, verify=True) as opened:
    assert len(opened) == 300
  # Byte for byte the store of a run that never failed, with no debris left.
  assert (store / "manifest.json").read_text() == (reference_store / "manifest.json").read_text()
  assert sorted(p.name for p in store.iterdir()) == sorted(p.name for p in reference_store.iterdir())


# ----- A pod: the processes agree on which checkpoint they resume from. -----

_PROCESS_1_CANNOT_READ_20 = """
import errno, os, sys
import orbax.checkpoint as ocp
from optical_jax import cli
_restore = ocp.StandardCheckpointHandler.restore
def restore(self, directory, *args, **kwargs):
  # Only this process fails to read step 20 (its shards, its network); process 0 reads it whole.
  if directory.parent.name == "20":
    raise OSError(errno.EIO, os.strerror(errno.EIO), str(directory))
  return _restore(self, directory, *args, **kwargs)
ocp.StandardCheckpointHandler.restore = restore
sys.exit(cli.main(sys.argv[1:]))
"""


@multiprocess
def test_a_step_one_process_cannot_read_is_skipped_by_all(tmp_path):
  import test_multiprocess as tm  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  args = ("train", "--workdir", str(workdir), *TRAIN)
  tm.check_ok(tm.finish(tm.launch_command(*args)))
  uninterrupted = [(r["step"], r["loss"]) for r in tm.metrics_rows(workdir)]
  script = tmp_path / "process_1.py"
  script.write_text(_PROCESS_1_CANNOT_READ_20)
  port = tm._free_port()  # pylint: disable=protected-access
  procs = []
  for i in range(2):
    env = tm._env(tm.DEVICES, OPTICAL_JAX_DISTRIBUTED="1", OPTICAL_JAX_COORDINATOR=f"127.0.0.1:{port}",  # pylint: disable=protected-access
                  OPTICAL_JAX_NUM_PROCESSES="2", OPTICAL_JAX_PROCESS_ID=str(i))
    cmd = [sys.executable, *(["-m", "optical_jax"] if i == 0 else [str(script)]), *args]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = tm.finish(procs)
  tm.check_ok(results)
  assert [json.loads(out.strip().splitlines()[-1])["start_step"] for _, out, _ in results] == [10, 10]
  assert f"{workdir}/checkpoints/20: unreadable checkpoint (process(es) [1] could not read it)" in results[0][2]
  assert (f"{workdir}/checkpoints/20: unreadable checkpoint (OSError: [Errno 5] Input/output error: "
          f"'{workdir}/checkpoints/20/state')") in results[1][2]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10", "20", "corrupt-20"]
  assert [(r["step"], r["loss"]) for r in tm.metrics_rows(workdir)] == uninterrupted
