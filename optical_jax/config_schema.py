"""Every config key: its type, its default (or REQUIRED), its allowed values, and what it means.

The one table behind config loading: a config file's keys and the `--config.a.b=v` overrides are checked against it
(unknown or misspelt key, wrong type, value outside its choices), and the keys a file leaves out get these defaults,
so every config can be overridden, trained, evaluated and benchmarked. Cross-field rules live in config.validate.
No jax import: the CLI loads configs before `jax.distributed` starts.
"""
from __future__ import annotations

import dataclasses
from typing import Any

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Key:
  type: type          # bool | int | float | str | tuple (of ints)
  default: Any = REQUIRED
  choices: tuple = ()
  doc: str = ""


OT_GRADS = ("envelope", "implicit", "unroll")
DTYPES = ("float32", "bfloat16")

SCHEMA: dict[str, Key] = {
    "seed": Key(int),
    # Mesh axes; -1 = fill with the rest of the devices.
    "mesh.data": Key(int), "mesh.fsdp": Key(int), "mesh.tensor": Key(int),

    "student.init": Key(str, doc='HF directory, or "random" (built from the dims below)'),
    "student.model_type": Key(str, "bert", ("bert", "xlm-roberta"), "random init only"),
    "student.vocab_size": Key(int, 0, doc="random init only"),
    "student.hidden_size": Key(int, 0, doc="random init only"),
    "student.num_layers": Key(int, 0, doc="random init only"),
    "student.num_heads": Key(int, 0, doc="random init only"),
    "student.intermediate_size": Key(int, 0, doc="random init only"),
    "student.max_position_embeddings": Key(int, 512, doc="random init only"),
    "student.pad_token_id": Key(int, 0, doc="random init only"),
    "student.projection_dim": Key(int, 0, doc="0 = no projection head"),
    "student.normalize": Key(bool, False, doc="L2-normalise the head's output"),
    "student.dtype": Key(str, "float32", DTYPES, "compute dtype (params stay float32)"),
    "student.freeze_word_embeddings": Key(bool, False),
    "student.keep_layers": Key(int, 0, doc="> 0: a pretrained init keeps only its first N encoder layers, a "
                                           "shallower student (0 = all; random inits use num_layers)"),
    "student.trainable_layers": Key(int, 0, doc="> 0: train only the top N encoder layers (and the head); the "
                                                "embeddings and the layers below stay as loaded (0 = all)"),
    "student.prefix": Key(str, "", doc='prepended to the low-resource text (e.g. "query: " for E5 students)'),

    "teacher.path": Key(str, doc='HF directory; "random" = random tiny BERT; "synthetic" = the generator\'s'),
    "teacher.dim": Key(int, doc="teacher token width"),
    "teacher.query_prefix": Key(str, ""),
    "teacher.passage_prefix": Key(str, ""),
    "teacher.targets": Key(str, "query", ("query", "passage"),
                           'the stored English targets: "query" = encoded with teacher.query_prefix, "passage" = with '
                           "teacher.passage_prefix, the side retrieval scores the student against"),

    "data.bitext": Key(str, doc='"synthetic" | TSV/JSONL path or URI | "tfds:NAME/CONFIG"; several, comma-separated, '
                               'each SPEC[@WEIGHT] (share of each batch, default 1)'),
    "data.teacher_store": Key(str, "", doc='"" = WORKDIR/teacher_store'),
    "data.tfds_data_dir": Key(str, "", doc='"" = WORKDIR/tfds'),
    "data.strict": Key(bool, False, doc="stop at the first bad bitext line instead of counting and skipping it"),
    "data.max_len_student": Key(int),
    "data.max_len_teacher": Key(int),
    "data.length_buckets": Key(tuple, (), doc="() = off; else increasing student lengths ending at max_len_student"),
    "data.length_group": Key(int, 0, doc="> 1: pool this many consecutive batches, sort them by length bucket and "
                                         "cut them again (batches of similar length; 0 = off)"),
    "data.dev_pairs": Key(int, 0, doc="English texts held out of training, with every pair translating them: the "
                                      "dev set of train.eval_every (0 = none)"),
    "data.num_examples": Key(int, 2048, doc="synthetic bitext only"),
    "data.max_train_pairs": Key(int, 0, doc="seeded sample of each bitext source (0 = all)"),
    "data.sample_seed": Key(int, 0),
    "data.nested_sample": Key(bool, False, doc="samples of different max_train_pairs nest (100 within 300 within "
                                                "1000), whatever the sizes; False keeps the demo's 4,800-pair sample"),
    "data.teacher_batch_size": Key(int, 64),
    "data.teacher_dtype": Key(str, "float16", ("float16", "bfloat16", "float32"), "teacher store dtype"),
    "data.examples_per_shard": Key(int, 4096),
    "data.verify_store": Key(bool, True, doc="check every store shard's sha256 when training opens it"),
    "data.augment": Key(str, "", ("", "code_switch"), '"code_switch": replace a fraction of the words with their '
                                                      'lexicon translations, afresh every step ("" = off)'),
    "data.augment_lexicon": Key(str, "", doc='code-switching lexicon: a TSV (word<TAB>english[<TAB>score]) or '
                                             'freedict:swh-eng / freedict:eng-swh; several comma-separated'),
    "data.augment_fraction": Key(float, 0.3, doc="share of the lexicon-covered words replaced in each example"),
    "data.augment_direction": Key(str, "to_english", ("to_english", "to_source"),
                                  '"to_english": source words -> English in the student\'s input; "to_source": '
                                  "English words -> source in the English-side term's input"),

    "ot.epsilon": Key(float, doc="entropic regularisation; must match the cost scale (docs/method.md)"),
    "ot.iterations": Key(int, doc="fixed Sinkhorn iteration count"),
    "ot.grad": Key(str, "envelope", OT_GRADS),
    "ot.marginals": Key(str, "uniform", ("uniform", "idf")),
    "ot.relative_epsilon": Key(str, "", ("", "std", "mean"), '"" = absolute; else epsilon x that statistic of C'),
    "ot.lse_mode": Key(bool, True, doc="False = kernel-domain Sinkhorn (faster, can underflow)"),
    "ot.tau_student": Key(float, 1.0, doc="unbalanced OT: 1 = balanced student marginal"),
    "ot.tau_teacher": Key(float, 1.0, doc="unbalanced OT: 1 = balanced teacher marginal"),
    "ot.plan_centering": Key(bool, False, doc="solve the plan on sentence-mean-centred tokens"),
    "ot.tokens": Key(str, "all", ("all", "content"), '"content" = no special / prefix tokens in the OT problem'),
    "ot.idf_power": Key(float, 1.0, doc='ot.marginals="idf": weight = IDF ** idf_power'),

    "loss.ot_weight": Key(float, 1.0),
    "loss.mse_weight": Key(float, 0.0, doc="sentence-level MSE distillation baseline"),
    "loss.english_weight": Key(float, 0.0, doc="English-side term OT(teacher(en), student(en))"),
    "loss.english_mse_weight": Key(float, 0.0, doc="English-side MSE(student(en), teacher(en)) on pooled vectors "
                                                    "(with loss.mse_weight: make_multilingual's both sides)"),
    "loss.rank_weight": Key(float, 0.0, doc="contrastive ranking term on stored teacher documents (0 = pure OPTICAL)"),
    "loss.rank_temperature": Key(float, 0.05, doc="softmax temperature of the ranking term (scores lie in [-1, 1])"),
    "loss.rank_scorer": Key(str, "maxsim", ("maxsim", "pooled"), "which retrieval score the ranking term trains"),
    "loss.rank_target": Key(str, "translation", ("translation", "teacher"),
                            '"translation" = InfoNCE (the translation first); "teacher" = distil the teacher\'s '
                            "score distribution over the candidates"),
    "loss.rank_hard_negatives": Key(int, 0, doc="mined hard negatives per example (teacher's nearest other "
                                                  "training examples), scored beside the in-batch documents"),
    "loss.rank_duplicate_threshold": Key(float, 1.0, doc="negatives whose teacher score to the positive reaches "
                                                          "this are dropped as near-duplicates (1 = keep all)"),

    "train.batch_size": Key(int, doc="global"),
    "train.steps": Key(int),
    "train.lr": Key(float),
    "train.warmup_steps": Key(int),
    "train.weight_decay": Key(float),
    "train.clip_norm": Key(float),
    "train.checkpoint_every": Key(int),
    "train.keep_checkpoints": Key(int, 2),
    "train.log_every": Key(int),
    "train.eval_every": Key(int, 0, doc="steps between dev retrieval scores (dev_mrr@10) in metrics.jsonl; 0 = off"),
    "train.best_metric": Key(str, "", ("", "dev_mrr@10", "dev_top1"),
                             'keep the params of the dev evaluation with the best value of this metric in WORKDIR/best '
                             '(and best.json) for export; "" = off. Needs train.eval_every and data.dev_pairs'),
    "train.best_mode": Key(str, "max", ("max", "min"), "whether a higher or a lower train.best_metric is better"),
    "train.wandb": Key(bool, False, doc="also log the metrics to Weights & Biases (pip install 'optical-jax[wandb]'); "
                                        "offline, into WORKDIR/wandb, unless WANDB_MODE says otherwise"),
    "train.wandb_project": Key(str, "optical_jax", doc="the W&B project of train.wandb"),
    "train.max_consecutive_nonfinite": Key(int, 10, doc="skipped non-finite steps in a row before the run fails"),
    "train.stop_vote_every": Key(int, 1, doc="multi-host: steps between the all-process stop votes"),

    # `optical-jax pretrain` (continued pre-training; the run itself uses train.*, its optimizer and mesh).
    "pretrain.objective": Key(str, "mlm", ("mlm", "tlm"), '"mlm" = masked LM on monolingual text; "tlm" = '
                                                            "translation LM: each bitext pair as one sequence"),
    "pretrain.text": Key(str, "", doc="monolingual text files, one sentence per line (comma-separated; mlm only)"),
    "pretrain.bitext": Key(str, "", doc="bitext sources as data.bitext (train split only: tfds:bible/* = Old "
                                        "Testament): mlm reads their low-resource side, tlm both sides"),
    "pretrain.heldout": Key(float, 0.05, doc="share of the texts held out for heldout_mlm_loss (by a hash of the "
                                             "text: copies of a line stay together)"),
    "pretrain.max_heldout": Key(int, 512, doc="held-out texts scored at each evaluation (the first ones)"),
    "pretrain.eval_every": Key(int, 100, doc="steps between held-out MLM losses (0 = only at the start and end)"),
    "pretrain.mask_prob": Key(float, 0.15, doc="share of each sequence's non-special tokens predicted "
                                               "(80 % shown as the mask token, 10 % random, 10 % unchanged)"),
    "pretrain.max_len": Key(int, 0, doc="sequence length; 0 = data.max_len_student (mlm) or twice it (tlm)"),

    "eval.system": Key(str, "", doc='name of the trained student ("" = from the loss weights)'),
    "eval.collections": Key(str, "", doc="comma-separated: built-in collection names, irds:NAME (an ir_datasets "
                                         "dataset, e.g. irds:clirmatrix/en/bi139-base/sw/test1; needs "
                                         "optical-jax[irds], downloads on first use), and BEIR folders (DIR or "
                                         "DIR@SPLIT: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)"),
    "eval.files": Key(str, "", doc='your own collections: "[NAME=]QUERIES,DOCUMENTS,QRELS", several separated by ";" '
                                   "(qrels TREC or BEIR)"),
    "eval.index": Key(str, "", doc="comma-separated `optical-jax index` folders: documents found there are read, "
                                   "not encoded again (same teacher, passage prefix and token rule)"),
    "eval.num_verses": Key(int, 1000),
    "eval.num_topical": Key(int, 300),
    "eval.num_quran": Key(int, 0, doc="0 = all held-out Quran verses"),
    "eval.seed": Key(int, 0),
    "eval.max_len_query": Key(int, 0, doc="0 = data.max_len_student"),
    "eval.max_len_doc": Key(int, 0, doc="0 = data.max_len_teacher"),
    "eval.doc_window": Key(int, 0, doc="> 0: search documents as passages of this many words (long documents; "
                                       "0 = whole, cut at max_len_doc tokens)"),
    "eval.doc_stride": Key(int, 0, doc="words between passage starts (0 = doc_window: no overlap)"),
    "eval.doc_aggregate": Key(str, "maxp", ("maxp", "firstp"), "document score: its best passage's, or its first's"),
    "eval.batch_size": Key(int, 64),
    "eval.k": Key(int, 100),
    "eval.scorers": Key(str, "maxsim,pooled"),
    "eval.maxsim_tokens": Key(str, "content", ("content", "all")),
    "eval.mix": Key(float, 1.0, doc="evaluate mix x trained + (1 - mix) x zero-shot weights (WiSE-FT; 1 = trained)"),
    "eval.baselines": Key(str, "teacher_en,zero_shot", doc="teacher_en, teacher_lr, zero_shot"),

    # `optical-jax bench` measurement knobs.
    "bench.steps": Key(int, 10, doc="timed train steps of each variant (--steps overrides)"),
    "bench.warmup_steps": Key(int, 2, doc="untimed steps of every variant after compilation"),
    "bench.max_rounds": Key(int, 10, doc="timed steps are split into at most this many interleaved rounds"),
    "bench.num_batches": Key(int, 4, doc="distinct synthetic batches cycled through (same shapes)"),
    "bench.min_real_frac": Key(float, 0.5, doc="real lengths are uniform in [ceil(frac * L), L]"),
    "bench.ot_repeats": Key(int, 5, doc="rounds of OT-only timings"),
    "bench.ot_calls_per_round": Key(int, 5, doc="timed back-to-back OT-only calls per round"),
    "bench.ot_warmup_calls": Key(int, 1, doc="untimed OT-only calls right before the timed ones"),
    "bench.loop_repeats": Key(int, 1, doc="rounds that time the per-pair POT loop (--compare)"),
    "bench.torch_threads": Key(tuple, (0, 1), doc="torch thread counts of the reference (0 = its default)"),
    "bench.sweep_batch": Key(tuple, (8, 16, 32), doc="--sweep: global batch sizes"),
    "bench.sweep_student_len": Key(tuple, (16, 32), doc="--sweep: student lengths"),
    "bench.sweep_iterations": Key(tuple, (10, 50, 100), doc="--sweep: Sinkhorn iteration counts"),
    "bench.sweep_steps": Key(int, 3, doc="--sweep: timed steps per point and variant"),
}

SECTIONS = tuple(dict.fromkeys(k.partition(".")[0] for k in SCHEMA if "." in k))
