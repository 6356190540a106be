"""CPU-sized continued pre-training of mE5-small on Swahili, before the demo's distillation (configs/demo_sw.py).

Masked-language modelling on the Swahili side of the demo's own bitext, tfds:bible/sw_en, whose train split is the
Old Testament (23,145 verses; the evaluation queries the New Testament, which pretraining never reads). 5 % of the
verses are held out for heldout_mlm_loss. mE5 ships without an MLM head, so the head's transform starts fresh
(seeded); its decoder is the word-embedding table.

  optical-jax assets me5-small
  optical-jax pretrain --config configs/pretrain_sw.py --workdir runs/pretrain_sw
  optical-jax precompute-teacher --config configs/demo_sw.py --workdir runs/demo_pt
  optical-jax train --config configs/demo_sw.py --workdir runs/demo_pt --config.student.init=runs/pretrain_sw/export

The teacher stays the original mE5: only the student starts from the pretrained weights.

Everything else is demo_sw.py's (student, mesh, seed, max length 48, the bitext's tfds build in WORKDIR/tfds); the
config arg is passed on to it. What differs, and why:
- 300 steps x 16 verses (~0.2 epoch of the Old Testament): the demo's own budget of steps and batch size.
- lr 1e-4 with 30 warm-up steps: the fresh head's first, large gradients must not reach the encoder at full rate.
- The word-embedding table stays frozen, as in the demo's student: with the decoder tied to it, training it would
  cost a dense 250k x 384 gradient and Adam update every step, and the student that follows freezes it anyway.
"""
import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location("optical_jax_demo_sw", os.path.join(os.path.dirname(__file__),
                                                                                  "demo_sw.py"))
demo_sw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_sw)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = demo_sw.get_config(arg)
  c.pretrain = ml_collections.ConfigDict(dict(
      objective="mlm",            # "mlm" | "tlm" (both sides of each pair in one sequence)
      text="",                    # monolingual text files instead (one sentence per line)
      bitext="tfds:bible/sw_en",  # mlm reads the Swahili side of its train split (Old Testament)
      heldout=0.05,               # ~1,150 verses held out, by a hash of the verse text
      max_heldout=256,            # of them scored at each evaluation (16 batches)
      eval_every=100,
      mask_prob=0.15,
      max_len=0,                  # 0 = data.max_len_student (48)
  ))
  c.train.update(dict(steps=300, lr=1e-4, warmup_steps=30, checkpoint_every=100, log_every=10))
  return c
