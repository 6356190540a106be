"""Code-switching augmentation: what a replacement does, that each batch is a pure function of (seed, step) so a
resumed run sees the same augmented batches, the length bound that keeps buckets valid, config errors, and (slow)
a resumed augmented training run that ends bit-identical to an uninterrupted one."""
import json
import shutil

import numpy as np
import pytest

from optical_jax.data import augment, encoding, lexicon as lexicon_lib, pipeline
from optical_jax.data.batch_spec import TrainingData
from optical_jax.errors import UserError

LEXICON = {"mungu": ["god"], "na": ["and"], "nchi": ["earth", "country"], "mbingu": ["heavens", "sky"],
           "maji": ["water"], "nuru": ["light"], "giza": ["darkness"], "siku": ["day"]}
WORDS = ["mungu", "na", "nchi", "mbingu", "maji", "nuru", "giza", "siku", "aliumba", "ilikuwa", "ukiwa", "juu"]
N, BATCH, MAX_LEN = 64, 8, 96


def _texts(n=N, seed=0):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, rng.integers(3, 9))).capitalize() + "." for _ in range(n)]


def test_code_switch_keeps_punctuation_case_and_the_uncovered_words():
  rng = np.random.default_rng(0)
  text, replaced = augment.code_switch("Mungu aliumba mbingu na nchi.", LEXICON, 1.0, rng)
  assert replaced == 4 and text.startswith("God aliumba ") and text.endswith(".")
  assert augment.code_switch("Mungu aliumba.", LEXICON, 1e-9, rng) == ("Mungu aliumba.", 0)


def test_same_seed_step_and_example_give_the_same_text_and_other_steps_differ():
  text = " ".join(["mungu na nchi mbingu maji nuru giza siku"] * 3)
  runs = {step: augment.code_switch(text, LEXICON, 0.5, augment.example_rng(7, step, 3))[0] for step in range(20)}
  assert runs[5] == augment.code_switch(text, LEXICON, 0.5, augment.example_rng(7, 5, 3))[0]
  assert len(set(runs.values())) > 15
  assert augment.code_switch(text, LEXICON, 0.5, augment.example_rng(8, 5, 3))[0] != runs[5]  # another seed
  assert augment.code_switch(text, LEXICON, 0.5, augment.example_rng(7, 5, 4))[0] != runs[5]  # another example


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.8])
def test_the_fraction_of_covered_words_replaced(fraction):
  text = " ".join(["mungu na nchi aliumba"] * 50)  # 150 covered words, 50 uncovered
  replaced = [augment.code_switch(text, LEXICON, fraction, augment.example_rng(0, step, 0))[1]
              for step in range(40)]
  share = np.mean(replaced) / 150
  assert abs(share - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / (150 * 40)), share


def test_a_smaller_fraction_replaces_a_subset():
  text = " ".join(["mungu na nchi mbingu"] * 10)
  small = augment.code_switch(text, LEXICON, 0.2, augment.example_rng(1, 2, 3))[0].split()
  large = augment.code_switch(text, LEXICON, 0.6, augment.example_rng(1, 2, 3))[0].split()
  original = text.split()
  assert all(l != o for s, l, o in zip(small, large, original) if s != o)


def _data(texts, tokenizer, idf=False):
  """A TrainingData over `texts` as store_join builds it (tables indexed by example), with a dummy teacher side."""
  ids, mask = augment.tokenize(tokenizer, texts, MAX_LEN)
  from optical_jax.data import tokens
  tables = {"student_ids": ids, "student_mask": mask, "student_ot_mask": tokens.content_mask(mask, 1),
            "teacher_tokens": np.zeros((len(texts), 4, 2), np.float32), "teacher_mask": np.ones((len(texts), 4),
                                                                                               np.int32)}
  if idf:
    tables["student_weights"] = tokens.idf_weights(ids, mask) ** 1.0
  load_rows = lambda indices: {k: v[np.asarray(indices)] for k, v in tables.items()}
  return TrainingData(load_rows, len(texts), 2, {k: None for k in tables}, "test", tokenizer=tokenizer,
                      student_lengths=pipeline.real_lengths(mask), teacher_lengths=np.full(len(texts), 4))


def _augmented(texts, fraction=0.5, seed=3, idf=False):
  tok = encoding.byte_tokenizer()
  data = _data(texts, tok, idf)
  switcher = augment.CodeSwitcher(texts, LEXICON, tok, side="student", prefix="", max_len=MAX_LEN, ot_skip=1,
                                  fraction=fraction, seed=seed, idf_power=1.0 if idf else None)
  return data, augment.wrap(data, switcher), switcher


def _buckets(data):
  return pipeline.LengthBuckets((32, 64, MAX_LEN), (4, 4, 4), data.student_lengths, data.teacher_lengths)


def test_batches_are_a_pure_function_of_seed_and_step_so_resume_is_exact():
  texts = _texts()
  clean, data, _ = _augmented(texts)
  stream = lambda rows=slice(0, BATCH): pipeline.BatchStream(data.load_rows, N, BATCH, 0, rows, buckets=_buckets(data))
  straight = [batch for _, batch in zip(range(12), (b for _, b in stream().iterate(0)))]
  resumed = [batch for _, batch in zip(range(5), (b for _, b in stream().iterate(7)))]
  for a, b in zip(straight[7:], resumed):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Two processes, each loading half of every global batch, see the rows of the one-process batch.
  halves = [stream(rows).batch(9) for rows in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))]
  np.testing.assert_array_equal(np.concatenate([h["student_ids"] for h in halves]), straight[9]["student_ids"])
  # Augmented: the stream's rows differ from the clean text's, and the same example differs between steps.
  plain = pipeline.BatchStream(clean.load_rows, N, BATCH, 0, slice(0, BATCH), buckets=_buckets(data))
  assert any(not np.array_equal(plain.batch(s)["student_ids"], straight[s]["student_ids"]) for s in range(12))
  index = int(stream().indices(0)[0])
  first = {_rows_at(data, index, step)["student_ids"].tobytes() for step in range(12)}
  assert len(first) > 1


def _rows_at(data, index, step):
  token = pipeline._LOADING_STEP.set(step)  # pylint: disable=protected-access
  try:
    return data.load_rows(np.array([index]))
  finally:
    pipeline._LOADING_STEP.reset(token)  # pylint: disable=protected-access


def test_rows_outside_the_training_stream_keep_the_clean_text():
  texts = _texts()
  clean, data, _ = _augmented(texts, fraction=1.0)
  rows, plain = data.load_rows(np.arange(10)), clean.load_rows(np.arange(10))
  for key in plain:
    np.testing.assert_array_equal(rows[key], plain[key])


def test_every_augmentation_fits_its_length_bound_and_masks_follow():
  texts = _texts(seed=1)
  clean, data, switcher = _augmented(texts, fraction=0.7, idf=True)
  assert np.all(data.student_lengths >= clean.student_lengths) and np.any(data.student_lengths > clean.student_lengths)
  stream = pipeline.BatchStream(data.load_rows, N, BATCH, 0, slice(0, BATCH), buckets=_buckets(data))
  for step in range(40):
    batch = stream.batch(step)  # trim_batch raises if a row holds real tokens past its bucket
    indices = stream.indices(step)
    assert np.all(pipeline.real_lengths(batch["student_mask"]) <= data.student_lengths[indices])
    np.testing.assert_array_equal(batch["student_ot_mask"][:, 0], 0)  # [CLS] stays out of the OT problem
    assert np.all((batch["student_weights"] > 0) == (batch["student_mask"] > 0))
  assert switcher.fallbacks == 0
  # An example the stream did not change keeps its stored row (weights included) bit for bit.
  unchanged = [i for i in range(N) if augment.code_switch(texts[i], LEXICON, 0.7,
                                                          augment.example_rng(3, 0, i))[1] == 0]
  if unchanged:
    row, plain = _rows_at(data, unchanged[0], 0), clean.load_rows(np.array(unchanged[:1]))
    for key in plain:
      np.testing.assert_array_equal(row[key], plain[key])


@pytest.mark.parametrize("overrides, message", [
    (["data.augment=code_switch"], "needs data.augment_lexicon"),
    (["data.augment=code_switch", "data.augment_lexicon=freedict:swh-eng", "data.augment_fraction=0"],
     "augment_fraction must be in (0, 1]"),
    (["data.augment=code_switch", "data.augment_lexicon=x.tsv", "data.augment_direction=to_source"],
     "loss.english_weight"),
    (["data.augment=code_switch", "data.augment_lexicon=x.tsv", "data.bitext=synthetic"], "has none"),
    (["data.augment=code_swap"], "data.augment: must be one of"),
])
def test_config_errors(overrides, message):
  from optical_jax import config as config_lib
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.load_config("configs/tiny.py:text", ["data.bitext=pairs.tsv", *overrides])


def test_a_missing_lexicon_stops_train_with_one_line_and_exit_2(tmp_path, capsys):
  from optical_jax import cli
  bitext = tmp_path / "pairs.tsv"
  bitext.write_text("mungu na nchi\tgod and earth\n")
  code = cli.main(["train", "--config", "configs/tiny.py:text", "--workdir", str(tmp_path / "run"),
                   f"--config.data.bitext={bitext}", "--config.data.augment=code_switch",
                   f"--config.data.augment_lexicon={tmp_path / 'nope.tsv'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "nope.tsv: no such lexicon file" in err[0], err
  code = cli.main(["lexicon", "--coverage", "freedict:xho-eng", "--config", "configs/tiny.py:text",
                   f"--config.data.bitext={bitext}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "unknown FreeDict dictionary" in err[0], err


# ------------------------------------------------------------------------------------------------------------------
# End to end on configs/tiny.py:text (random tiny teacher and student, byte-level tokenizer).

@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A bitext file, its lexicon, and a teacher store precomputed for it."""
  from optical_jax import config as config_lib
  from optical_jax import precompute
  root = tmp_path_factory.mktemp("augment_run")
  rng = np.random.default_rng(0)
  en = {w: t[0] for w, t in LEXICON.items()}
  lines = ["id\tsource\ttarget"]
  for i in range(96):
    words = list(rng.choice(WORDS, rng.integers(3, 7)))
    lines.append(f"p{i}\t{' '.join(words)}\t{' '.join(en.get(w, w.upper()) for w in words)}")
  (root / "pairs.tsv").write_text("\n".join(lines) + "\n")
  lexicon_lib.write_tsv(LEXICON, root / "lex.tsv")
  overrides = [f"data.bitext={root / 'pairs.tsv'}", "data.augment=code_switch", f"data.augment_lexicon={root / 'lex.tsv'}",
               "data.augment_fraction=0.5", "train.batch_size=8", "train.checkpoint_every=3", "train.log_every=3",
               "ot.tokens=content", "ot.marginals=idf", f"data.teacher_store={root / 'store'}"]
  precompute.precompute_teacher(config_lib.load_config("configs/tiny.py:text", overrides), str(root / "pre"))
  return root, overrides


@pytest.mark.slow
def test_resumed_augmented_run_is_bit_identical_and_a_lexicon_is_induced(text_run, capsys):
  import jax
  from optical_jax import cli, export, train
  from optical_jax import config as config_lib
  root, overrides = text_run
  config = lambda steps: config_lib.load_config("configs/tiny.py:text", [*overrides, f"train.steps={steps}"])
  summary = train.train(config(6), str(root / "straight"), progress=False)
  assert "code-switched to_english (fraction 0.5" in summary["data"]
  report = json.loads((root / "straight" / augment.REPORT).read_text())
  assert report["coverage"]["token_coverage"] > 0.5 and report["side"] == "source"
  # A run that died after its step-3 checkpoint: the same workdir without the later one.
  shutil.copytree(root / "straight", root / "resumed")
  shutil.rmtree(root / "resumed" / "checkpoints" / "6")
  assert train.train(config(6), str(root / "resumed"), progress=False)["start_step"] == 3
  a, _ = export.load_student(str(root / "straight"))
  b, _ = export.load_student(str(root / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)

  # Induction on the (barely trained) student: shape and format only.
  out = root / "induced.tsv"
  assert cli.main(["lexicon", "--workdir", str(root / "straight"), "--out", str(out), "--pairs", "40",
                   "--min-count", "1", "--min-mass", "0"]) == 0
  stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert stats["pairs"] == 40 and stats["store_mismatches"] == 0 and stats["entries"] > 0
  induced = lexicon_lib.read_tsv(out)
  assert set(induced) <= set(WORDS) and all(1 <= len(t) <= 3 for t in induced.values())
  lines = [l for l in out.read_text().splitlines() if not l.startswith("#")]
  assert all(len(l.split("\t")) == 3 and 0 < float(l.split("\t")[2]) <= 1 for l in lines)
  assert cli.main(["lexicon", "--coverage", f"{out},{root / 'lex.tsv'}", "--config", "configs/tiny.py:text",
                   *(f"--config.{o}" for o in overrides)]) == 0
  cov = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["coverage"]
  assert [c["lexicon"] for c in cov] == [str(out), str(root / "lex.tsv")] and cov[1]["token_coverage"] > 0.5
