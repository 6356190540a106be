"""`optical-jax experiment`: a spec's dry run checks everything in seconds; a run trains and evaluates every cell x
seed once (a rerun skips them), and its table's means equal the evaluations' own metrics.json."""
import csv
import json
import pathlib
import re

import numpy as np
import pytest

from optical_jax import cli
from optical_jax.demo import synthetic
from optical_jax.errors import UserError
from optical_jax import experiment


def _spec(tmp_path, files, **changes):
  spec = dict(config="configs/tiny.py:text",
              overrides=[f"data.bitext={files['bitext.tsv']}", "train.steps=4", "train.log_every=2",
                         "train.checkpoint_every=4", "train.warmup_steps=1", "eval.k=10"],
              files=f"toy={files['queries.tsv']},{files['documents.jsonl']},{files['qrels.txt']}",
              collections="", cells={"control": [], "lr_high": ["train.lr=0.01"]}, control="control",
              seeds=(0, 1), metrics=("mrr@10",))
  spec.update(changes)
  path = tmp_path / f"spec_{len(list(tmp_path.glob('spec_*')))}.py"
  path.write_text(f"def get_spec():\n  return {spec!r}\n")
  return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return synthetic.write_files(tmp_path_factory.mktemp("data"), train_pairs=128, test_pairs=24)


def test_baselines_must_be_known_systems(tmp_path, files):
  for bad in (("teacher",), "zero_shot", ("control",)):
    with pytest.raises(UserError, match="baselines must be a tuple"):
      experiment.main(_spec(tmp_path, files, baselines=bad), str(tmp_path / "w"), dry=True)


def test_dry_run_checks_configs_sources_and_collections(tmp_path, files, capsys):
  spec = _spec(tmp_path, files)
  assert cli.main(["experiment", "--spec", spec, "--workdir", str(tmp_path / "w"), "--dry-run"]) == 0
  assert "dry run: 4 runs in 2 cells x 2 seeds" in capsys.readouterr().out
  assert not (tmp_path / "w" / "cells").exists()
  bad = [_spec(tmp_path, files, cells={"control": [], "typo": ["train.lrr=1"]}),
         _spec(tmp_path, files, overrides=["data.bitext=/no/such.tsv", "train.steps=4"]),
         _spec(tmp_path, files, collections="bible_xx_en"),
         _spec(tmp_path, files, control="missing")]
  for path, message in zip(bad, ["train.lrr", "does not exist", "query language .xx.", "control .missing."]):
    with pytest.raises(UserError, match=message):
      experiment.main(path, str(tmp_path / "w"), dry=True)


def _shipped_specs() -> list[str]:
  """Every experiments/*.py, with each of its VARIANTS (`FILE:VARIANT`)."""
  out = []
  for path in sorted(pathlib.Path(experiment.REPO, "experiments").glob("*.py")):
    variants = re.search(r"^VARIANTS = \(([^)]*)\)", path.read_text(), re.M)
    names = [v.strip().strip("'\"") for v in variants.group(1).split(",") if v.strip()] if variants else [""]
    out += [f"{path}:{v}" if v else str(path) for v in names]
  return out


@pytest.mark.parametrize("spec", _shipped_specs())
def test_every_shipped_spec_passes_its_dry_run(spec, tmp_path):
  plan = experiment.main(spec, str(tmp_path), dry=True)["plan"]
  assert plan and all(entry["store"].startswith(str(tmp_path / "stores")) for entry in plan)


@pytest.mark.slow
def test_run_writes_tables_recomputable_from_the_evaluations(tmp_path, files, capsys):
  spec = _spec(tmp_path, files, baselines=("zero_shot",), axis={"control": 100, "lr_high": 300},
               pairs=[("lr_high", "zero_shot")])
  workdir = tmp_path / "w"
  assert cli.main(["experiment", "--spec", spec, "--workdir", str(workdir), "--cell", "0"]) == 0
  rows = list(csv.DictReader(open(workdir / "table.csv")))
  # one cell done: the table covers it and the baseline, evaluated once by cell 0's task
  assert [r["cell"] for r in rows] == ["control", "zero_shot"] and rows[1]["baseline"] == "True"
  results = experiment.main(spec, str(workdir))
  out = capsys.readouterr().out
  assert "[1/4] control seed 0: done already" in out and "baselines: done already" in out
  rows = {r["cell"]: r for r in results["rows"]}
  for cell, row in rows.items():
    if cell == "zero_shot":
      continue
    means = [json.loads((workdir / "cells" / cell / f"seed_{s}" / "eval" / "metrics.json").read_text())
             ["systems"][f"{cell}_maxsim"]["toy"]["mrr@10"] for s in (0, 1)]
    assert row["mean"] == pytest.approx(np.mean(means), abs=1e-9) and row["seeds"] == 2
  assert "diff" in rows["lr_high"] and 0 <= rows["lr_high"]["p_holm"] <= 1 and "diff" not in rows["control"]
  zero_shot = json.loads((workdir / "baselines" / "eval" / "metrics.json").read_text())["systems"]
  assert rows["zero_shot"]["mean"] == pytest.approx(zero_shot["zero_shot_maxsim"]["toy"]["mrr@10"], abs=1e-9)
  assert "diff" in rows["zero_shot"] and rows["zero_shot"]["seeds"] == 0
  (pair,) = results["pairs"]  # one pair x one (collection, metric)
  assert pair["diff"] == pytest.approx(rows["lr_high"]["mean"] - rows["zero_shot"]["mean"], abs=1e-9)
  assert pair["p_holm"] == pair["p_value"]
  assert "| lr_high | zero_shot | toy | mrr@10 |" in (workdir / "table.md").read_text()
  with pytest.raises(UserError, match="pairs"):
    experiment.main(_spec(tmp_path, files, pairs=[("lr_high", "nope")]), str(workdir), dry=True)
  assert len(list((workdir / "stores").iterdir())) == 2  # the random tiny teacher depends on the seed only
  assert (workdir / "table.md").exists() and (workdir / results["plots"][0]).exists()


@pytest.mark.slow
def test_a_spec_pretrains_once_and_trains_a_cell_from_the_export(tmp_path, files, capsys, monkeypatch):
  from optical_jax.data import mlm_text
  # The New Testament guard reads nine Bible versions (seconds); the toy text is no Bible verse anyway.
  monkeypatch.setattr(mlm_text, "_new_testament_verses", lambda: frozenset())
  bitext = files["bitext.tsv"]
  pretrain_run = ("configs/tiny.py:text", [f"pretrain.bitext={bitext}", f"data.bitext={bitext}", "train.steps=2",
                                          "train.checkpoint_every=2", "train.log_every=1", "pretrain.eval_every=2",
                                          "pretrain.max_len=32"])
  bad = _spec(tmp_path, files, cells={"control": [], "pt": ["student.init=@pretrain:nope"]})
  with pytest.raises(UserError, match="@pretrain:nope"):
    experiment.main(bad, str(tmp_path / "w"), dry=True)
  spec = _spec(tmp_path, files, cells={"control": [], "pt": ["student.init=@pretrain:mlm"]}, seeds=(0,),
               pretrain={"mlm": pretrain_run})
  workdir = tmp_path / "w"
  plan = experiment.main(spec, str(workdir), dry=True)["plan"]
  assert len(plan) == 2
  assert cli.main(["experiment", "--spec", spec, "--workdir", str(workdir), "--cell", "1"]) == 0
  export = workdir / "pretrain" / "mlm" / "export"
  assert (export / "config.json").exists()
  config = json.loads((workdir / "cells" / "pt" / "seed_0" / "config.json").read_text())
  assert config["student"]["init"] == str(export)
  assert "continued pre-training 'mlm'" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_cell_is_not_evaluated_and_resumes_to_the_uninterrupted_result(tmp_path, files, monkeypatch,
                                                                                       capsys):
  from optical_jax import distributed

  class StopAfterSecondStep:
    """A stop request (as SIGTERM gives) agreed at step index 1: training saves a checkpoint at step 2 and returns."""

    def __init__(self, mesh, every=1):
      del mesh, every

    def __call__(self, requested, step):
      return step == 1

  spec = _spec(tmp_path, files, cells={"control": [], "lr_high": ["train.lr=0.01"]}, seeds=(0,))
  workdir, reference = tmp_path / "w", tmp_path / "reference"
  with monkeypatch.context() as patch:
    patch.setattr(distributed, "StopVote", StopAfterSecondStep)
    assert cli.main(["experiment", "--spec", spec, "--workdir", str(workdir)]) == 0
  out = capsys.readouterr().out
  assert "[1/2] control seed 0: stopped at step 2 of 4 on request; rerun to resume" in out
  assert "lr_high" not in out  # a stop request ends the whole run, not only the cell
  cell = workdir / "cells" / "control" / "seed_0"
  assert not (cell / "eval").exists() and (cell / "checkpoints").exists()
  assert cli.main(["experiment", "--spec", spec, "--workdir", str(workdir)]) == 0  # resumes, evaluates, goes on
  assert cli.main(["experiment", "--spec", spec, "--workdir", str(reference)]) == 0  # never interrupted
  for name in ("control", "lr_high"):
    got, want = (json.loads((w / "cells" / name / "seed_0" / "eval" / "metrics.json").read_text())["systems"]
                 for w in (workdir, reference))
    assert got == want
