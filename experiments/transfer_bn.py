"""How do students trained on different source collections transfer? Bengali -> English.

Cells: the recipe trained on one source each, at equal pairs (3,000) and steps: the Bible (scripture, long
verses), the Quran (scripture, another register), the LibreOffice UI strings (short software text), and all
three mixed evenly (1,000 each). Every cell is scored on both verse collections, so the table's rows are the
training source and its columns the test collection: the off-diagonal cells are the transfer. Control: Bible.

FAQ-style or QA-style sources (WebFAQ, TyDi QA) do not reach this machine: add them as cells with your files
(`data.bitext=/path/faq_bn_en.tsv`) and your test collections (`collections=...,irds:NAME` or a BEIR folder).

  optical-jax experiment --spec experiments/transfer_bn.py --workdir runs/exp/transfer_bn --dry-run
  optical-jax experiment --spec experiments/transfer_bn.py:cpu --workdir runs/exp/transfer_bn_cpu

Full: 3 seeds, 300 steps. `cpu`: one seed, 150 steps, 500 verses per collection.

Status: dry-run tested; not yet run, so there are no results to quote.
"""
VARIANTS = ("", "cpu")
PAIRS = 3000
SOURCES = {"bible": "tfds:bible/bn_en", "quran": "tfds:quran/bn_en", "libreoffice": "tfds:libreoffice/bn_en"}
CPU_OVERRIDES = ["train.steps=150", "train.warmup_steps=10", "eval.num_verses=500", "eval.scorers=maxsim"]


def get_spec(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  cpu = variant == "cpu"
  cells = {name: [f"data.bitext={source}@1", f"data.max_train_pairs={PAIRS}"] for name, source in SOURCES.items()}
  cells["mixed"] = [f"data.bitext={','.join(s + '@1' for s in SOURCES.values())}",
                    f"data.max_train_pairs={PAIRS // len(SOURCES)}"]
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=["data.nested_sample=True", "eval.baselines=", *(CPU_OVERRIDES if cpu else [])],
      cells=cells,
      baselines=("zero_shot",),
      control="bible",
      seeds=(0,) if cpu else (0, 1, 2),
      metrics=("mrr@10", "ndcg@10"),
      collections="bible_bn_en,quran_bn_en",
  )
