"""End-to-end `optical-jax train` on configs/tiny.py (SYNTHETIC bitext): metrics, resume, kill -9, SIGTERM, export."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from optical_jax.errors import UserError

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", CI="1")


def _cli(*args, check=True, **kwargs):
  proc = subprocess.run([sys.executable, "-m", "optical_jax", *args], env=ENV, capture_output=True, text=True,
                        timeout=600, **kwargs)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
  return proc


def _train(workdir, *overrides):
  return _cli("train", "--config", "configs/tiny.py", "--workdir", str(workdir), *overrides)


def _metrics(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _exported_weights(workdir, out):
  from safetensors.numpy import load_file
  _cli("export", "--workdir", str(workdir), "--out", str(out))
  return load_file(str(out / "model.safetensors"))


def test_train_resume_and_export(tmp_path):
  wd = tmp_path / "run"
  _train(wd, "--config.train.steps=20", "--config.train.checkpoint_every=10", "--config.train.log_every=5")
  rows = _metrics(wd)
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  for key in ("loss", "ot/marginal_error", "ot/plan_entropy", "grad_norm", "lr", "step_time_s", "real_tokens_per_s"):
    assert key in rows[-1], key
  assert (wd / "config.json").exists() and list((wd / "tensorboard").iterdir())
  # Same command with more steps resumes from 20.
  out = _train(wd, "--config.train.steps=30", "--config.train.checkpoint_every=10", "--config.train.log_every=5")
  assert json.loads(out.stdout.strip().splitlines()[-1])["start_step"] == 20
  assert [r["step"] for r in _metrics(wd)] == [5, 10, 15, 20, 25, 30]

  import torch
  import transformers
  hf = tmp_path / "hf"
  weights = _exported_weights(wd, hf)
  model = transformers.BertModel.from_pretrained(str(hf))
  ids = torch.tensor([[1, 5, 6, 7, 2, 0]])
  hidden = model(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
  assert torch.isfinite(hidden).all() and "embeddings.word_embeddings.weight" in weights


def test_frozen_word_embeddings_resume_and_export(tmp_path):
  # optax.masked leaves MaskedNodes in the optimizer state: restoring must keep them (it once crashed on resume).
  args = ["--config.student.freeze_word_embeddings=True", "--config.train.checkpoint_every=4",
          "--config.data.num_examples=256"]
  wd = tmp_path / "run"
  _train(wd, "--config.train.steps=4", *args)
  before = _exported_weights(wd, tmp_path / "hf4")
  out = _train(wd, "--config.train.steps=8", *args)
  assert json.loads(out.stdout.strip().splitlines()[-1])["start_step"] == 4
  after = _exported_weights(wd, tmp_path / "hf8")
  key = "embeddings.word_embeddings.weight"
  np.testing.assert_array_equal(before[key], after[key])  # frozen through the resume
  assert not np.array_equal(before["embeddings.LayerNorm.bias"], after["embeddings.LayerNorm.bias"])

  # Weight-space interpolation (export --mix / eval.mix): mix 0 is the untrained student, 0.5 the midpoint.
  import jax
  from optical_jax import export
  trained, _ = export.load_student(str(wd))
  untrained, _ = export.load_student(str(wd), mix=0.0)
  half, _ = export.load_student(str(wd), mix=0.5)
  jax.tree.map(lambda h, t, u: np.testing.assert_allclose(h, 0.5 * (t + u), rtol=1e-6, atol=1e-7),
               half.params, trained.params, untrained.params)
  from optical_jax import config as config_lib
  from optical_jax import student as student_lib
  initial = student_lib.initial_encoder(config_lib.from_json(wd / "config.json"))
  jax.tree.map(np.testing.assert_array_equal, untrained.params, initial.params)
  with pytest.raises(UserError, match="mix"):
    export.load_student(str(wd), mix=1.5)


def test_bad_config_exits_2(tmp_path):
  proc = _cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path), "--config.train.nope=1", check=False)
  assert proc.returncode == 2 and "train.nope" in proc.stderr and "Traceback" not in proc.stderr
  proc = _cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path), "--config.train.batch_size=12",
              check=False)
  assert proc.returncode == 2 and "batch_size" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_tiny_200_steps_loss_falls_30_percent(tmp_path):
  _train(tmp_path / "run")
  rows = _metrics(tmp_path / "run")
  first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-3:]])
  assert rows[-1]["step"] == 200
  assert last <= 0.7 * first, (first, last)


def _wait_for_checkpoint(workdir, proc, step):
  deadline = time.time() + 300
  while time.time() < deadline:
    if (workdir / "checkpoints" / str(step)).exists():
      return
    if proc.poll() is not None:
      raise AssertionError(proc.stderr.read())
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


INTERRUPT_ARGS = ["--config.train.steps=40", "--config.train.checkpoint_every=10", "--config.data.num_examples=256"]


@pytest.fixture(scope="module")
def uninterrupted_weights(tmp_path_factory):
  """The exported weights of an uninterrupted run of INTERRUPT_ARGS: made once, for both interrupted-run tests."""
  base = tmp_path_factory.mktemp("uninterrupted")
  _train(base / "run", *INTERRUPT_ARGS)
  return _exported_weights(base / "run", base / "hf")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_interrupted_run_resumes_bit_identical(tmp_path, how, uninterrupted_weights):
  args = INTERRUPT_ARGS
  interrupted = tmp_path / "interrupted"
  proc = subprocess.Popen([sys.executable, "-m", "optical_jax", "train", "--config", "configs/tiny.py", "--workdir",
                           str(interrupted), *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(interrupted, proc, 10)
  proc.send_signal(signal.SIGKILL if how == "kill9" else signal.SIGTERM)
  proc.wait(timeout=120)
  if how == "sigterm":
    assert proc.returncode == 0, proc.stderr.read()
  out = _train(interrupted, *args)
  assert json.loads(out.stdout.strip().splitlines()[-1])["start_step"] >= 10
  a = uninterrupted_weights
  b = _exported_weights(interrupted, tmp_path / "hf_int")
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)



def test_length_buckets_compile_once_each_and_log_it(tmp_path, caplog):
  """In process: with data.length_buckets=(14, 16), steps 8, 10, 11 and 13 of this seed fit bucket 14 (teacher 21).

  One compile per bucket, each announced; the step time leaves the mid-run compile out. (That a cut batch gives the
  loss of the full one is tests/test_train_step.py's; that it holds the same rows, tests/data/test_pipeline.py's.)
  """
  import logging
  from optical_jax import config as config_lib
  from optical_jax import train
  config = config_lib.load_config("configs/tiny.py", [
      "train.steps=12", "train.log_every=4", "train.checkpoint_every=12", "train.batch_size=8",
      "data.num_examples=256", "data.length_buckets=(14, 16)"])
  with caplog.at_level(logging.INFO, logger="optical_jax"):
    summary = train.train(config, str(tmp_path), progress=False)
  assert summary["batch_lengths_compiled"] == [[16, 24], [14, 21]]
  assert summary["recompilations_after_first_step"] == 0
  assert "compiling the train step for length bucket 14 (teacher 21) at step 8" in caplog.text
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == [4, 8, 12]
  assert all(np.isfinite(r["step_time_s"]) and 0 < r["step_time_s"] < 1 and np.isfinite(r["loss"]) for r in rows)
