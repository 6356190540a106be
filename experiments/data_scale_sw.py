"""How much bitext does each distillation objective need? Swahili -> English, on the demo's model and evaluation.

Cells: {100, 300, 1,000, 3,000, 23,145 = all} Old Testament pairs (nested seeded samples) x {optical (OT + ranking term),
ot_only (pure OPTICAL), contrastive (ranking term alone), mse_distill (make_multilingual's pooled MSE, both sides)},
3 training seeds each; every run takes the same 300 steps x 16 pairs (so small samples are seen for more epochs).
Control: the recipe on 3,000 pairs. Scored on the demo's verse, held-out-English-version and cross-reference
collections (MaxSim).

  optical-jax experiment --spec experiments/data_scale_sw.py --workdir runs/exp/data_scale_sw --dry-run
  optical-jax experiment --spec experiments/data_scale_sw.py --workdir runs/exp/data_scale_sw      # ~6 h, 2 CPU cores
  optical-jax experiment --spec experiments/data_scale_sw.py:cpu --workdir runs/exp/data_scale_sw_cpu   # ~35 min

The `cpu` variant is what fits one session on a 2-core CPU: {100, 300, 1,000, 3,000} pairs x the four objectives,
one seed, 150 steps of 16 pairs, 500 New Testament verses per collection, MaxSim only (run 2026-12-03: results
in docs/experiments.md); the full grid has not been run.
"""
SIZES = (100, 300, 1000, 3000, 0)  # 0 = every Old Testament pair (23,145)
OBJECTIVES = {
    "optical": [],
    "ot_only": ["loss.rank_weight=0", "eval.mix=1.0"],
    "contrastive": ["loss.ot_weight=0"],
    "mse_distill": ["loss.ot_weight=0", "loss.rank_weight=0", "loss.mse_weight=1", "loss.english_mse_weight=1",
                    "eval.mix=1.0"],
}


VARIANTS = ("", "cpu")  # get_spec(VARIANT); every shipped variant's dry run is tested
ALL_PAIRS = 23145
CPU_SIZES = (100, 300, 1000, 3000)
CPU_OVERRIDES = ["train.steps=150", "train.warmup_steps=10", "eval.num_verses=500", "eval.scorers=maxsim"]


def get_spec(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  sizes = CPU_SIZES if variant == "cpu" else SIZES
  name = lambda objective, n: f"{objective}_n{n or ALL_PAIRS}"
  cells = {name(objective, n): [f"data.max_train_pairs={n}", *overrides]
           for objective, overrides in OBJECTIVES.items() for n in sizes}
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=["data.nested_sample=True", "eval.baselines=", *(CPU_OVERRIDES if variant == "cpu" else [])],
      cells=cells,
      baselines=("zero_shot",),
      control="optical_n3000",
      seeds=(0,) if variant == "cpu" else (0, 1, 2),
      metrics=("mrr@10", "ndcg@10"),
      collections="bible_sw_en,bible_sw_en_kjv" + ("" if variant == "cpu" else ",bible_xref_sw_en"),
      axis_label="bitext pairs (log)",
      axis={name(objective, n): n or ALL_PAIRS for objective in OBJECTIVES for n in sizes},
      series={name(objective, n): objective for objective in OBJECTIVES for n in sizes},
      # What OT adds to the ranking term, and the recipe against each baseline objective, at every size.
      pairs=[*((name("optical", n), name(other, n)) for n in sizes for other in OBJECTIVES if other != "optical"),
             *((name(objective, n), "zero_shot") for objective in OBJECTIVES for n in sizes)],
  )
