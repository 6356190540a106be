"""CI-sized OPTICAL run: random 2-layer student and SYNTHETIC bitext, or (`:text`) a random tiny teacher on a file.

`configs/tiny.py` trains on synthetic token pairs with synthetic teacher embeddings (optical_jax.data.synthetic):
it exercises the training path in seconds on a CPU and says nothing about retrieval quality.
`configs/tiny.py:text` runs the whole text path — bitext file, random tiny teacher with a byte-level tokenizer,
teacher store, student tokenization — with no asset package:

  optical-jax train --config configs/tiny.py --workdir runs/tiny
  optical-jax train --config configs/tiny.py --workdir runs/tiny --config.train.steps=50 --config.mesh.data=8
  optical-jax precompute-teacher --config configs/tiny.py:text --workdir runs/tiny_text --config.data.bitext=pairs.tsv
  optical-jax train --config configs/tiny.py:text --workdir runs/tiny_text --config.data.bitext=pairs.tsv
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  text = arg == "text"
  if arg not in (None, "", "text"):
    raise ValueError(f"configs/tiny.py takes no argument or 'text', got {arg!r}")
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Student encoder: "random" builds it from the dims below; an HF directory loads it.
  c.student = ml_collections.ConfigDict(dict(
      init="random",
      model_type="bert",          # "bert" | "xlm-roberta" (only used by init="random")
      vocab_size=512,
      hidden_size=64,
      num_layers=2,
      num_heads=4,
      intermediate_size=128,
      max_position_embeddings=64,
      projection_dim=32,          # 0 = no projection head; here it maps hidden 64 to the teacher dim 32
      dtype="float32",            # compute dtype: "float32" | "bfloat16" (params stay float32)
      freeze_word_embeddings=False,
      prefix="",                  # prepended to the low-resource text (e.g. "query: " for E5 students)
  ))

  # Teacher: "synthetic" = the generator's own embeddings; "random" = a random tiny BERT (hidden = dim) with a
  # byte-level tokenizer; otherwise an HF directory.
  # targets: which side of the teacher the store holds, "query" (query_prefix) or "passage" (passage_prefix).
  c.teacher = ml_collections.ConfigDict(dict(path="random" if text else "synthetic", query_prefix="",
                                             passage_prefix="", dim=32, targets="query"))

  c.data = ml_collections.ConfigDict(dict(
      bitext="SET_ME" if text else "synthetic",  # "synthetic" | TSV/JSONL path or URI | "tfds:NAME/CONFIG"
      teacher_store="",           # "" = <workdir>/teacher_store
      strict=False,
      max_len_student=48 if text else 16,
      max_len_teacher=48 if text else 24,
      # Pad each global batch to the smallest of these student lengths that fits it (teacher: scaled to
      # max_len_teacher), one compile each; () = always to max_len_*. Synthetic lengths are uniform up to the max, so
      # a batch of 32 nearly always needs the max: buckets only pay off on real text.
      length_buckets=(16, 32, 48) if text else (),
      length_group=0,             # > 1: batches sorted by length within windows of this many (needs length_buckets)
      dev_pairs=0,                # held-out pairs for the dev curve (train.eval_every)
      num_examples=2048,          # synthetic only
  ))

  c.ot = ml_collections.ConfigDict(dict(
      epsilon=0.05,               # absolute entropic regularisation (must match the cost scale: docs/method.md)
      iterations=30,              # fixed Sinkhorn iteration count (vmapped: no data-dependent stopping)
      relative_epsilon="",        # "" = absolute epsilon; "std" | "mean" = epsilon x that statistic of each cost matrix
      grad="envelope",            # "envelope" | "implicit" | "unroll"
      marginals="uniform",        # "uniform" | "idf"
      tokens="all",               # tokens in the OT problem: "all" | "content" (no special / prefix tokens)
  ))

  # Pure OPTICAL; loss.rank_weight > 0 adds the ranking term (docs/method.md).
  c.loss = ml_collections.ConfigDict(dict(ot_weight=1.0, mse_weight=0.0, rank_weight=0.0, rank_temperature=0.05,
                                          rank_duplicate_threshold=1.0))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      steps=200,
      lr=3e-3,
      warmup_steps=20,
      weight_decay=0.01,
      clip_norm=1.0,
      checkpoint_every=50,
      keep_checkpoints=2,
      log_every=10,
      eval_every=0,               # steps between dev scores on data.dev_pairs (0 = off)
  ))
  return c
