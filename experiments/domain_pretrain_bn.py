"""Domain pre-training on Bengali: MLM on Bible vs Quran vs LibreOffice text vs none, then the same distillation.

Pretrain runs (once each, by the runner): 300 steps of MLM (configs/pretrain_sw.py's budget) on the Bengali side of
the Bible's Old Testament (`tfds:bible/bn_en`), of the Quran's training surahs (`tfds:quran/bn_en`), or of the
LibreOffice UI translations' training split (`tfds:libreoffice/bn_en`, a third, unrelated domain). Cells: the
recipe (OT + ranking term) trained on Bengali Bible bitext, from each init; 3 seeds. Control: no MLM. Scored on
Bengali Bible verses (in-domain for the bitext) and Quran verses (in-domain for the Quran MLM only).

  optical-jax experiment --spec experiments/domain_pretrain_bn.py --workdir runs/exp/domain_pretrain_bn

The `cpu` variant: one seed, 150 training steps, 500 Bible verses.

Status: `:cpu` run 2026-12-03 (results in docs/experiments.md: every MLM init is below mE5 as shipped); the full
grid has not been run.
"""
VARIANTS = ("", "cpu")
PRETRAIN = {"mlm_bible_bn": ["pretrain.bitext=tfds:bible/bn_en"], "mlm_quran_bn": ["pretrain.bitext=tfds:quran/bn_en"],
            "mlm_libreoffice_bn": ["pretrain.bitext=tfds:libreoffice/bn_en"]}


def get_spec(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  cpu = variant == "cpu"
  return dict(
      config="configs/demo_sw.py:optical",
      overrides=["data.bitext=tfds:bible/bn_en@1", "eval.baselines=",
                 *(["train.steps=150", "train.warmup_steps=10", "eval.num_verses=500", "eval.scorers=maxsim"]
                   if cpu else [])],
      pretrain={name: ("configs/pretrain_sw.py", overrides) for name, overrides in PRETRAIN.items()},
      cells={"no_mlm": [], **{name: [f"student.init=@pretrain:{name}"] for name in PRETRAIN}},
      baselines=("zero_shot",),
      control="no_mlm",
      seeds=(0,) if cpu else (0, 1, 2),
      metrics=("mrr@10", "ndcg@10"),
      collections="bible_bn_en,quran_bn_en",
  )
