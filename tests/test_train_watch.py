"""Training that watches itself: the best dev checkpoint kept in WORKDIR/best (train.best_metric), surviving a
resume and loadable for export, and the optional Weights & Biases writer, run offline."""
import json

import jax
import numpy as np
import pytest

from optical_jax import config as config_lib
from optical_jax import export
from optical_jax import metrics as metrics_lib
from optical_jax import train
from optical_jax.errors import UserError

# configs/tiny.py shrunk: 256 synthetic pairs, 32 of them held out, a dev score every 2 steps.
TINY = ["train.batch_size=8", "train.log_every=2", "train.checkpoint_every=4", "data.num_examples=256",
        "data.dev_pairs=32", "train.eval_every=2", "train.lr=0.01", "train.warmup_steps=0"]


def _config(*overrides):
  return config_lib.load_config("configs/tiny.py", [*TINY, *overrides])


def _dev_curve(workdir):
  return [(r["step"], r["dev_mrr@10"]) for r in metrics_lib.read_metrics(workdir) if "dev_mrr@10" in r]


def _first_best(curve):
  best = max(value for _, value in curve)
  return next(step for step, value in curve if value == best), best


def test_best_checkpoint_is_the_best_dev_step_and_loads(tmp_path, monkeypatch):
  from optical_jax import checkpointing
  kept = {}
  update = checkpointing.BestCheckpoint.update

  def spy(self, step, scores, params):  # the params as the run handed them over, to compare with the load
    saved = update(self, step, scores, params)
    if saved:
      kept[step] = jax.device_get(params)
    return saved

  monkeypatch.setattr(checkpointing.BestCheckpoint, "update", spy)
  wd = tmp_path / "run"
  summary = train.train(_config("train.steps=6", "train.best_metric=dev_mrr@10"), str(wd), progress=False)
  curve = _dev_curve(wd)
  assert [s for s, _ in curve] == [0, 2, 4, 6]
  step, value = _first_best(curve)
  record = json.loads((wd / "best" / "best.json").read_text())
  assert record == {"step": step, "metric": "dev_mrr@10", "mode": "max", "value": value}
  assert summary["best_step"] == step and summary["best_value"] == value
  assert sorted(p.name for p in (wd / "best").iterdir() if p.is_dir()) == [str(step)]  # earlier bests are gone

  encoder, loaded_step = export.load_student(str(wd), checkpoint="best")
  assert loaded_step == step
  jax.tree.map(np.testing.assert_array_equal, encoder.params, kept[step])
  _, latest_step = export.load_student(str(wd))  # the default is unchanged: the newest training checkpoint
  assert latest_step == 6
  with pytest.raises(UserError, match="checkpoint must be"):
    export.load_student(str(wd), checkpoint="newest")
  (wd / "best").rename(tmp_path / "elsewhere")
  with pytest.raises(UserError, match="no best checkpoint"):
    export.load_student(str(wd), checkpoint="best")


def _scripted_dev_scores(monkeypatch, values):
  """The dev evaluations return `values` in turn: a curve whose best the test chooses."""
  from optical_jax import dev_eval
  queue = list(values)

  def make_dev_eval(model, dev, mesh):
    del model, dev, mesh
    return lambda params: {"dev_mrr@10": queue.pop(0), "dev_top1": 0.0}

  monkeypatch.setattr(dev_eval, "make_dev_eval", make_dev_eval)
  return queue


@pytest.mark.slow
def test_best_survives_a_resume_past_it_and_a_resume_stays_bit_exact(tmp_path, monkeypatch):
  # Steps 0..8 every 2; the best is at step 2, the value at step 8 only equals it.
  config = _config("train.steps=8", "train.best_metric=dev_mrr@10")
  wd = tmp_path / "run"
  _scripted_dev_scores(monkeypatch, [0.1, 0.5, 0.3, 0.45, 0.5])
  train.train(config, str(wd), progress=False)
  assert json.loads((wd / "best" / "best.json").read_text())["step"] == 2
  best_params, _ = export.load_student(str(wd), checkpoint="best")
  final_params, _ = export.load_student(str(wd))

  # As if killed after the evaluations of steps 6 and 8 but before the checkpoint of step 8 was committed: the
  # rerun resumes from 4, and neither the worse value at step 6 nor the equal one at 8 replaces the best of step 2.
  import shutil
  shutil.rmtree(wd / "checkpoints" / "8")
  _scripted_dev_scores(monkeypatch, [0.45, 0.5])
  summary = train.train(config, str(wd), progress=False)
  assert summary["start_step"] == 4 and summary["best_step"] == 2 and summary["best_value"] == 0.5
  assert json.loads((wd / "best" / "best.json").read_text()) == {"step": 2, "metric": "dev_mrr@10", "mode": "max",
                                                                  "value": 0.5}
  assert [s for s, _ in _dev_curve(wd)] == [0, 2, 4, 6, 8]
  again, step = export.load_student(str(wd), checkpoint="best")
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, again.params, best_params.params)
  resumed, _ = export.load_student(str(wd))
  jax.tree.map(np.testing.assert_array_equal, resumed.params, final_params.params)

  # A run from step 0 in the same workdir (its checkpoints moved away) starts a new history: the old best goes.
  (wd / "checkpoints").rename(tmp_path / "old_checkpoints")
  _scripted_dev_scores(monkeypatch, [0.05, 0.06])
  summary = train.train(_config("train.steps=2", "train.best_metric=dev_mrr@10"), str(wd), progress=False)
  assert summary["best_step"] == 2 and json.loads((wd / "best" / "best.json").read_text())["value"] == 0.06


def test_best_checkpoint_keeps_one_step_chosen_by_its_metric(tmp_path):
  """BestCheckpoint alone: strict improvements only, a lower step may replace a higher one (a replay that did not
  reach the kept value bit for bit), and a run under another metric or from step 0 drops what was kept."""
  from optical_jax import checkpointing
  directory = tmp_path / "best"
  params = lambda v: {"w": jax.numpy.full((4, 2), v, jax.numpy.float32)}
  shardings = {"w": jax.sharding.SingleDeviceSharding(jax.devices()[0])}
  kept_steps = lambda: sorted(int(p.name) for p in directory.iterdir() if p.is_dir())
  record = lambda: json.loads((directory / "best.json").read_text())

  best = checkpointing.BestCheckpoint(directory, "dev_mrr@10")
  assert best.start(resumed=False) is None
  assert best.update(0, {"dev_mrr@10": 0.2}, params(0.0))
  assert not best.update(2, {"dev_mrr@10": 0.2}, params(2.0))  # a tie keeps the earlier step
  assert not best.update(4, {"dev_mrr@10": float("nan")}, params(4.0))
  assert best.update(6, {"dev_mrr@10": 0.3}, params(6.0))
  best.close()
  assert kept_steps() == [6] and record() == {"step": 6, "metric": "dev_mrr@10", "mode": "max", "value": 0.3}

  best = checkpointing.BestCheckpoint(directory, "dev_mrr@10")
  assert best.start(resumed=True)["step"] == 6
  assert not best.update(8, {"dev_mrr@10": 0.25}, params(8.0))
  assert best.update(5, {"dev_mrr@10": 0.35}, params(5.0))
  best.close()
  assert kept_steps() == [5] and record()["value"] == 0.35
  reader = checkpointing.BestCheckpoint(directory)
  kept, values = reader.restore(params(0.0), shardings)
  reader.close()
  assert kept["step"] == 5 and np.all(np.asarray(values["w"]) == 5.0)

  best = checkpointing.BestCheckpoint(directory, "dev_mrr@10", "min")  # another mode: not comparable
  assert best.start(resumed=True) is None
  assert kept_steps() == [] and not (directory / "best.json").exists()
  assert best.update(9, {"dev_mrr@10": 0.9}, params(9.0)) and not best.update(10, {"dev_mrr@10": 0.95}, params(1.0))
  best.close()
  best = checkpointing.BestCheckpoint(directory, "dev_mrr@10", "min")
  assert best.start(resumed=False) is None and kept_steps() == []  # a run from step 0: a new history
  best.close()


@pytest.mark.parametrize("overrides", [
    ["train.eval_every=0"],
    ["data.dev_pairs=0", "train.eval_every=0"],
])
def test_best_metric_without_dev_evaluations_is_a_config_error(overrides):
  with pytest.raises(UserError) as e:
    _config("train.best_metric=dev_mrr@10", *overrides)
  message = str(e.value)
  assert "train.best_metric" in message and "train.eval_every" in message and "\n" not in message


def test_best_metric_must_be_a_dev_metric():
  with pytest.raises(UserError, match="train.best_metric.*dev_mrr@10"):
    _config("train.best_metric=loss")


def test_wandb_offline_run_beside_unchanged_metrics(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))  # where any stray file would land, not $HOME
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
  monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  steps = ["train.steps=4", "train.checkpoint_every=4"]
  on, off = tmp_path / "on", tmp_path / "off"
  train.train(_config(*steps, "train.wandb=True", "train.wandb_project=watch_test"), str(on), progress=False)
  train.train(_config(*steps), str(off), progress=False)

  runs = list((on / "wandb").glob("offline-run-*"))
  run_id = metrics_lib.wandb_run_id(on)
  assert len(runs) == 1 and runs[0].name.endswith(run_id), runs
  assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
  assert not (off / "wandb").exists()
  # Same rows, same values, but the wall-clock ones.
  timing = ("step_time_s", "real_tokens_per_s", "sequences_per_s")
  strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
  assert strip(metrics_lib.read_metrics(on)) == strip(metrics_lib.read_metrics(off))
  assert [sorted(r) for r in metrics_lib.read_metrics(on)] == [sorted(r) for r in metrics_lib.read_metrics(off)]


def test_wandb_missing_is_a_user_error(monkeypatch):
  import builtins
  real_import = builtins.__import__

  def no_wandb(name, *args, **kwargs):
    if name == "wandb":
      raise ImportError("No module named 'wandb'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_wandb)
  with pytest.raises(UserError, match=r"pip install 'optical-jax\[wandb\]'"):
    metrics_lib.require_wandb()
