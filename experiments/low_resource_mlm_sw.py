"""Extreme low resource: does continued MLM pre-training on Swahili make a few-hundred-pair student more robust?

Cells: {100, 300, 1,000, 3,000} Old Testament pairs (nested seeded samples) x {optical (OT + ranking term), ot_only,
contrastive, mse_distill} x {from mE5-small as shipped, from mE5-small after 300 steps of Swahili MLM
(configs/pretrain_sw.py, run once by the runner in DIR/pretrain/mlm_sw)}; 3 seeds; every run takes the demo's 300
steps of 16 pairs. Control: the recipe on 300 pairs without MLM. Scored on the verse, held-out-English-version and
cross-reference collections (MaxSim). The teacher is the original mE5 in every cell.

  optical-jax experiment --spec experiments/low_resource_mlm_sw.py --workdir runs/exp/low_resource_mlm_sw --dry-run
  optical-jax experiment --spec experiments/low_resource_mlm_sw.py:cpu --workdir runs/exp/low_resource_mlm_sw_cpu

The `cpu` variant: {100, 1,000} pairs x the recipe x {no MLM, MLM}, one seed, 150 steps, 500 verses per
collection, no cross-references (~25 min on 2 CPU cores, MLM included; data_scale_sw.py:cpu has the other
objectives at these sizes, without MLM).

Status: dry-run tested; not yet run, so there are no results to quote.
"""
import importlib.util
import os

VARIANTS = ("", "cpu")
# The same four objectives, with the same overrides, as the data-scale spec: the two grids stay comparable.
_spec = importlib.util.spec_from_file_location("optical_jax_data_scale_sw",
                                               os.path.join(os.path.dirname(__file__), "data_scale_sw.py"))
data_scale_sw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_scale_sw)
OBJECTIVES = data_scale_sw.OBJECTIVES
INITS = {"": [], "_mlm": ["student.init=@pretrain:mlm_sw"]}
CPU_OVERRIDES = ["train.steps=150", "train.warmup_steps=10", "eval.num_verses=500", "eval.scorers=maxsim"]


def get_spec(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  cpu = variant == "cpu"
  sizes = (100, 1000) if cpu else (100, 300, 1000, 3000)
  objectives = {k: OBJECTIVES[k] for k in (("optical",) if cpu else OBJECTIVES)}
  cells, axis, series = {}, {}, {}
  for objective, overrides in objectives.items():
    for init, init_overrides in INITS.items():
      for n in sizes:
        name = f"{objective}{init}_n{n}"
        cells[name] = [f"data.max_train_pairs={n}", *overrides, *init_overrides]
        axis[name], series[name] = n, objective + init
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=["data.nested_sample=True", "eval.baselines=", *(CPU_OVERRIDES if cpu else [])],
      pretrain={"mlm_sw": ("configs/pretrain_sw.py", [])},
      cells=cells,
      baselines=("zero_shot",),
      control="optical_n100" if cpu else "optical_n300",
      seeds=(0,) if cpu else (0, 1, 2),
      metrics=("mrr@10", "ndcg@10"),
      collections="bible_sw_en,bible_sw_en_kjv" + ("" if cpu else ",bible_xref_sw_en"),
      axis_label="bitext pairs (log)",
      axis=axis,
      series=series,
      pairs=[(f"{o}_mlm_n{n}", f"{o}_n{n}") for o in objectives for n in sizes],  # what MLM adds, per size
  )
