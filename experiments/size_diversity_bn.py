"""What pays more, model size or data diversity? Bengali -> English, at equal bitext pair counts.

Cells: student depth {6 layers (mE5-small cut to its first 6: `student.keep_layers=6`), 12 (as shipped)} x
training domains {1: Bible; 2: Bible + Quran; 3: Bible + Quran + LibreOffice UI strings}, every cell on the same
total of 1,500 unique pairs, split evenly over its domains (`data.max_train_pairs` samples each source: 1,500 /
750 / 500 per domain) and drawn evenly per batch. The teacher is the full mE5-small in every cell. Control: 12
layers, Bible only. Scored on the Bengali Bible and Quran verse collections (MaxSim); the UI-string domain has no
test collection here, so it can only help by diversity.

  optical-jax experiment --spec experiments/size_diversity_bn.py --workdir runs/exp/size_diversity_bn --dry-run
  optical-jax experiment --spec experiments/size_diversity_bn.py:cpu --workdir runs/exp/size_diversity_bn_cpu

Full: 3 seeds, 300 steps. `cpu`: one seed, 150 steps, 500 verses per collection.

Status: dry-run tested; not yet run, so there are no results to quote.
"""
VARIANTS = ("", "cpu")
TOTAL_PAIRS = 1500
DOMAINS = {
    1: ("tfds:bible/bn_en",),
    2: ("tfds:bible/bn_en", "tfds:quran/bn_en"),
    3: ("tfds:bible/bn_en", "tfds:quran/bn_en", "tfds:libreoffice/bn_en"),
}
DEPTHS = {6: ["student.keep_layers=6"], 12: []}
CPU_OVERRIDES = ["train.steps=150", "train.warmup_steps=10", "eval.num_verses=500", "eval.scorers=maxsim"]


def get_spec(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  cpu = variant == "cpu"
  cells, axis, series = {}, {}, {}
  for layers, depth_overrides in DEPTHS.items():
    for k, sources in DOMAINS.items():
      name = f"l{layers}_d{k}"
      cells[name] = [f"data.bitext={','.join(s + '@1' for s in sources)}",
                     f"data.max_train_pairs={TOTAL_PAIRS // k}", *depth_overrides]
      axis[name], series[name] = k, f"{layers} layers"
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=["data.nested_sample=True", "eval.baselines=", *(CPU_OVERRIDES if cpu else [])],
      cells=cells,
      baselines=("zero_shot",),
      control="l12_d1",
      seeds=(0,) if cpu else (0, 1, 2),
      metrics=("mrr@10", "ndcg@10"),
      collections="bible_bn_en,quran_bn_en",
      axis_label="training domains (log)",
      axis=axis,
      series=series,
      pairs=[("l6_d3", "l12_d1"), *((f"l12_d{k}", f"l6_d{k}") for k in DOMAINS)],  # diversity vs size
  )
