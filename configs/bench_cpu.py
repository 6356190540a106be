"""Throughput benchmark on a CPU: the demo-sized student (mE5-small shapes), random init, synthetic batches.

12 layers, hidden 384, 12 heads, FFN 1536 and the XLM-R vocabulary of 250,037 rows (what multilingual-e5-small
has); global batch 32, student length 32, teacher length 128, teacher dim 384, 50 log-domain Sinkhorn iterations.
Batches are generated on the device (`optical-jax bench` never reads data), so `data.bitext` is only a label.

  optical-jax bench --config configs/bench_cpu.py --json runs/bench_cpu.json
  optical-jax bench --config configs/bench_cpu.py --compare --json runs/bench_cpu_compare.json
  optical-jax bench --config configs/bench_cpu.py --sweep --json runs/bench_cpu_sweep.json
  optical-jax bench --config configs/bench_cpu.py --compare --config.student.freeze_word_embeddings=True

`bench` sets the measurement knobs: timed steps (`--steps`, default 10), untimed warm-up steps, rounds of the OT-only
timings, and the sweep grid. The peak on CPU is a jitted float32 GEMM measured in the same run.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, ""):
    raise ValueError(f"configs/bench_cpu.py takes no argument, got {arg!r}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.student = ml_collections.ConfigDict(dict(
      init="random",
      model_type="xlm-roberta",
      vocab_size=250037,          # multilingual-e5-small's vocabulary
      hidden_size=384,
      num_layers=12,
      num_heads=12,
      intermediate_size=1536,
      max_position_embeddings=514,
      projection_dim=0,
      dtype="float32",
      freeze_word_embeddings=False,
      prefix="",
  ))
  c.teacher = ml_collections.ConfigDict(dict(path="synthetic", query_prefix="", passage_prefix="", dim=384))
  c.data = ml_collections.ConfigDict(dict(
      bitext="synthetic",         # label only: the benchmark generates its batches on the device
      teacher_store="",
      strict=False,
      max_len_student=32,
      max_len_teacher=128,
      num_examples=32,
  ))
  # Kernel-domain Sinkhorn (lse_mode=False): the same fixed point as POT's log-domain solver, with matrix-vector
  # products instead of an exp per entry per iteration; safe here since cosine costs span <= 2 and 2 / 0.05 = 40.
  # --config.ot.lse_mode=True times the log domain.
  c.ot = ml_collections.ConfigDict(dict(epsilon=0.05, iterations=50, relative_epsilon="", grad="envelope",
                                        marginals="uniform", tokens="all", lse_mode=False))
  c.loss = ml_collections.ConfigDict(dict(ot_weight=1.0, mse_weight=0.0))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, steps=1000, lr=1e-4, warmup_steps=10, weight_decay=0.01, clip_norm=1.0,
      checkpoint_every=1000, keep_checkpoints=1, log_every=10))

  c.bench = ml_collections.ConfigDict(dict(
      warmup_steps=2,             # untimed steps after compilation
      min_real_frac=0.5,          # real lengths are uniform in [ceil(frac * L), L], as in optical_jax/bench/torch_reference.py
      ot_repeats=5,               # rounds of OT-only timings, each a burst of bench.ot_calls_per_round calls
      loop_repeats=1,             # rounds that time the per-pair POT loop (one call each)
      torch_threads=(0, 1),       # the reference at torch's default and at 1 thread; ratios use the faster one
      sweep_batch=(8, 32),
      sweep_student_len=(16, 32),
      sweep_iterations=(10, 50, 100),
      sweep_steps=3,
  ))
  return c
