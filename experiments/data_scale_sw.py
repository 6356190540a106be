"""How much bitext does each distillation objective need? Swahili -> English, on the demo's model and evaluation.

Cells: {300, 1,000, 3,000, 10,000} Old Testament pairs (nested seeded samples) x {optical (OT + ranking term),
ot_only (pure OPTICAL), contrastive (ranking term alone), mse_distill (make_multilingual's pooled MSE, both sides)},
3 training seeds each; every run takes the same 300 steps x 16 pairs (so small samples are seen for more epochs).
Control: the recipe on 3,000 pairs. Scored on the demo's verse, held-out-English-version and cross-reference
collections (MaxSim).

  optical-jax experiment --spec experiments/data_scale_sw.py --workdir runs/exp/data_scale_sw --dry-run
  optical-jax experiment --spec experiments/data_scale_sw.py --workdir runs/exp/data_scale_sw      # ~5 h, 2 CPU cores

Status: the dry run is tested; the grid itself has NOT been run yet (48 runs, about 5 hours on this project's 2-core
CPU machine), so there are no results to quote.
"""
SIZES = (300, 1000, 3000, 10000)
OBJECTIVES = {
    "optical": [],
    "ot_only": ["loss.rank_weight=0", "eval.mix=1.0"],
    "contrastive": ["loss.ot_weight=0"],
    "mse_distill": ["loss.ot_weight=0", "loss.rank_weight=0", "loss.mse_weight=1", "loss.english_mse_weight=1",
                    "eval.mix=1.0"],
}


def get_spec():
  cells = {f"{objective}_n{n}": [f"data.max_train_pairs={n}", *overrides]
           for objective, overrides in OBJECTIVES.items() for n in SIZES}
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=["data.nested_sample=True", "eval.baselines="],
      cells=cells,
      control="optical_n3000",
      seeds=(0, 1, 2),
      metrics=("mrr@10", "ndcg@10"),
      collections="bible_sw_en,bible_sw_en_kjv,bible_xref_sw_en",
      axis={f"{objective}_n{n}": n for objective in OBJECTIVES for n in SIZES},
      series={f"{objective}_n{n}": objective for objective in OBJECTIVES for n in SIZES},
  )
