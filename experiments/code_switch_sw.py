"""Do code-switched training data beat back-translated data? Swahili -> English, at 1,000 bitext pairs.

Cells, each the recipe (OT + ranking term) on the same nested sample of 1,000 Old Testament pairs:
- `none` (control): the bitext alone.
- `code_switch`: every step, each Swahili word FreeDict covers becomes one of its English translations with
  probability 0.3 (`data.augment=code_switch`, lexicon `freedict:swh-eng`, fetched from Debian and sha256-pinned).
- `english_side`: the English-side OT term on (`loss.english_weight=1`: the student also reads the English verse
  and is pulled to the teacher's tokens of it), without synthetic text. The stand-in below adds to this term, so
  this cell says how much of its effect is the term itself.
- `bt_standin`: `english_side`, with every English word the FreeDict English->Swahili dictionary covers replaced
  by a Swahili translation (`augment_direction=to_source`, fraction 1.0): the student reads a word-by-word
  Swahili rendering of each English verse. No machine-translation model reaches this machine, so this is a
  LABELLED STAND-IN for back-translation (no reordering, morphology or sense choice), not back-translation.
Real back-translations enter as a flagged bitext source instead: add a cell with
`data.bitext=tfds:bible/sw_en@1,YOUR_BT.tsv[synthetic]@1` (see docs/experiments.md).

  optical-jax experiment --spec experiments/code_switch_sw.py --workdir runs/exp/code_switch_sw --dry-run
  optical-jax experiment --spec experiments/code_switch_sw.py:cpu --workdir runs/exp/code_switch_sw_cpu

Full: 3 seeds, the demo's 300 steps, the verse, held-out-English-version and cross-reference collections, MaxSim;
P@10 and MAP beside MRR@10 and nDCG@10 (the question is asked in P@k and MAP). `cpu`: one seed, 150 steps, 500
verses, no cross-references.

Status: dry-run tested; not yet run, so there are no results to quote.
"""
VARIANTS = ("", "cpu")
PAIRS = 1000
CELLS = {
    "none": [],
    "code_switch": ["data.augment=code_switch", "data.augment_lexicon=freedict:swh-eng",
                    "data.augment_fraction=0.3", "data.augment_direction=to_english"],
    "english_side": ["loss.english_weight=1"],
    "bt_standin": ["loss.english_weight=1", "data.augment=code_switch", "data.augment_lexicon=freedict:eng-swh",
                   "data.augment_fraction=1.0", "data.augment_direction=to_source"],
}
CPU_OVERRIDES = ["train.steps=150", "train.warmup_steps=10", "eval.num_verses=500", "eval.scorers=maxsim"]


def get_spec(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  cpu = variant == "cpu"
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=[f"data.max_train_pairs={PAIRS}", "data.nested_sample=True", "eval.baselines=",
                 *(CPU_OVERRIDES if cpu else [])],
      cells=CELLS,
      baselines=("zero_shot",),
      control="none",
      pairs=[("bt_standin", "english_side"), ("code_switch", "bt_standin")],
      seeds=(0,) if cpu else (0, 1, 2),
      metrics=("mrr@10", "ndcg@10", "p@10", "map"),
      collections="bible_sw_en,bible_sw_en_kjv" + ("" if cpu else ",bible_xref_sw_en"),
  )
