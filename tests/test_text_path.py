"""The real-data path on a generated file: precompute the teacher store, train from it, refuse a wrong store.

configs/tiny.py:text uses a random tiny teacher with a byte-level tokenizer, so no asset package is needed.
"""
import json
import os
import random
import subprocess
import sys

import pytest

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", CI="1")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "optical_jax", *args], env=ENV, capture_output=True, text=True,
                        timeout=600)


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
    f.write("bad\t\tEMPTY SOURCE\n")
  return path


@pytest.fixture(scope="module")
def store_workdir(bitext, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  proc = _cli("precompute-teacher", "--config", "configs/tiny.py:text", "--workdir", str(workdir),
              f"--config.data.bitext={bitext}")
  assert proc.returncode == 0, proc.stderr
  return workdir


def test_precompute_then_train(bitext, store_workdir):
  report = json.loads((store_workdir / "data_report.json").read_text())
  assert report["skipped"] == {"empty_side": 1}
  manifest = json.loads((store_workdir / "teacher_store" / "manifest.json").read_text())
  assert manifest["num_examples"] == 300 and manifest["complete"]
  proc = _cli("train", "--config", "configs/tiny.py:text", "--workdir", str(store_workdir),
              f"--config.data.bitext={bitext}", "--config.train.steps=6", "--config.train.log_every=3",
              "--config.ot.tokens=content")
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["final_step"] == 6 and summary["recompilations_after_first_step"] == 0
  # configs/tiny.py:text pads to length buckets (16, 32, 48) on both sides (max lengths 48 / 48).
  assert summary["batch_lengths_compiled"] and all(
      s in ([16, 16], [32, 32], [48, 48]) for s in summary["batch_lengths_compiled"]), summary


def test_two_weighted_sources_share_one_store(bitext, tmp_path):
  """data.bitext with two sources: one teacher store over both, each English text stored once (sources that
  translate the same English share its rows), and training draws each source by its weight; the dev pairs held
  out of training are scored every train.eval_every steps, on batches grouped by length."""
  targets = [line.split("\t")[2].rstrip("\n") for line in bitext.read_text().splitlines()[1:21]]
  second = tmp_path / "second.tsv"
  second.write_text("".join(f"s{i}\tneno {i} la pili\t{targets[i] if i < 20 else f'SECOND {i}'}\n"
                            for i in range(40)))
  spec = f"{bitext}@3,{second}@1"
  workdir = tmp_path / "run"
  proc = _cli("precompute-teacher", "--config", "configs/tiny.py:text", "--workdir", str(workdir),
              f"--config.data.bitext={spec}")
  assert proc.returncode == 0, proc.stderr
  assert json.loads((workdir / "teacher_store" / "manifest.json").read_text())["num_examples"] == 320
  proc = _cli("train", "--config", "configs/tiny.py:text", "--workdir", str(workdir), f"--config.data.bitext={spec}",
              "--config.train.steps=4", "--config.train.log_every=2", "--config.data.dev_pairs=24",
              "--config.train.eval_every=2", "--config.data.length_group=4")
  assert proc.returncode == 0, proc.stderr
  assert "bitext sources:" in proc.stderr and "300 pairs, weight 3" in proc.stderr and "40 pairs, weight 1" in proc.stderr
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  dev = [(r["step"], r["dev_mrr@10"]) for r in rows if "dev_mrr@10" in r]
  assert [step for step, _ in dev] == [0, 2, 4] and all(0 < mrr <= 1 for _, mrr in dev)


def test_store_built_for_another_length_is_refused(bitext, store_workdir):
  proc = _cli("train", "--config", "configs/tiny.py:text", "--workdir", str(store_workdir / "other"),
              f"--config.data.bitext={bitext}", f"--config.data.teacher_store={store_workdir / 'teacher_store'}",
              "--config.data.max_len_teacher=40")
  assert proc.returncode == 2 and "max_len" in proc.stderr, proc.stderr


def test_missing_store_is_a_clear_error(bitext, tmp_path):
  proc = _cli("train", "--config", "configs/tiny.py:text", "--workdir", str(tmp_path), f"--config.data.bitext={bitext}")
  assert proc.returncode == 2 and "precompute-teacher" in proc.stderr


def test_corrupted_shard_is_refused_by_name(bitext, store_workdir, tmp_path):
  import shutil
  store = tmp_path / "store"
  shutil.copytree(store_workdir / "teacher_store", store)
  shard = sorted(store.glob("shard-*.array_record"))[0]
  data = bytearray(shard.read_bytes())
  data[len(data) // 3] ^= 0xFF
  shard.write_bytes(bytes(data))
  proc = _cli("train", "--config", "configs/tiny.py:text", "--workdir", str(tmp_path / "run"),
              f"--config.data.bitext={bitext}", f"--config.data.teacher_store={store}")
  assert proc.returncode == 2 and shard.name in proc.stderr, proc.stderr


@pytest.mark.parametrize("overrides", [[], ["ot.tokens=content", "ot.marginals=idf", "loss.english_weight=0.5",
                                            "data.teacher_dtype=float32", "loss.rank_weight=1.0",
                                            "loss.rank_hard_negatives=2"]])
def test_store_rows_match_the_batch_spec(bitext, store_workdir, overrides):
  """The stored-teacher loader's rows are exactly the spec's keys, ranks and dtypes (the store's dtype kept)."""
  import numpy as np
  from optical_jax import config as config_lib
  from optical_jax.data import batch_spec, store_join
  config = config_lib.load_config("configs/tiny.py:text", [f"data.bitext={bitext}", *overrides])
  data = store_join.build(config, store_workdir)
  rows = data.load_rows(np.arange(7))
  batch_spec.check_rows(rows, data.spec, "store_join")
  # The store was written in float16; data.teacher_dtype only says how precompute writes a new one.
  assert data.spec["teacher_tokens"].dtype == "float16" and rows["teacher_tokens"].dtype == np.float16
  assert set(data.spec) - set(batch_spec.batch_spec(config)) == set()
  if "negative_tokens" in rows:  # each example's mined negatives: other examples' stored rows, example-major
    negatives = rows["negative_index"].reshape(7, 2)
    assert not np.any(negatives == np.arange(7)[:, None])
    again = data.load_rows(negatives[:, 0])
    np.testing.assert_array_equal(rows["negative_tokens"][::2], again["teacher_tokens"])


def test_passage_mode_targets_are_stored_and_trained_with_the_passage_prefix(bitext, store_workdir, tmp_path):
  """teacher.targets=passage: the store encodes "passage prefix + English", the English-side input carries that
  prefix too, and a store of the other mode is refused by its prefix rather than silently used."""
  import numpy as np
  from optical_jax import config as config_lib
  from optical_jax.data import encoding, store_join
  from optical_jax.errors import UserError
  passage = [f"data.bitext={bitext}", "teacher.targets=passage", "teacher.passage_prefix=doc: ",
             "loss.english_weight=0.5"]
  with pytest.raises(UserError, match="prefix"):  # store_workdir holds query-mode targets (prefix "")
    store_join.build(config_lib.load_config("configs/tiny.py:text", passage), store_workdir)
  proc = _cli("precompute-teacher", "--config", "configs/tiny.py:text", "--workdir", str(tmp_path),
              *(f"--config.{o}" for o in passage))
  assert proc.returncode == 0, proc.stderr
  assert json.loads((tmp_path / "teacher_store" / "manifest.json").read_text())["prefix"] == "doc: "
  config = config_lib.load_config("configs/tiny.py:text", passage)
  data = store_join.build(config, tmp_path)
  rows = data.load_rows(np.arange(3))
  query = store_join.build(config_lib.load_config("configs/tiny.py:text", [f"data.bitext={bitext}",
                                                                            "loss.english_weight=0.5"]),
                           store_workdir).load_rows(np.arange(3))
  prefix_ids = encoding.student_tokenizer(config)("doc: ", add_special_tokens=False)["input_ids"]
  np.testing.assert_array_equal(rows["english_ids"][:, 1:1 + len(prefix_ids)], np.tile(prefix_ids, (3, 1)))
  assert not np.array_equal(rows["teacher_tokens"], query["teacher_tokens"])
