"""`optical-jax export`: the trained student of a workdir as a Hugging Face directory (transformers loads it)."""
from __future__ import annotations


import jax
import ml_collections
from etils import epath

from optical_jax import checkpointing, models
from optical_jax import config as config_lib
from optical_jax import sharding as sharding_lib
from optical_jax import student as student_lib
from optical_jax import train_step as train_step_lib
from optical_jax.errors import UserError


def load_student(workdir: str) -> tuple[models.Encoder, int]:
  """The newest readable checkpoint's student as a `models.Encoder` (params on host), and its step.

  Built from the workdir's config.json alone: the training data is never rebuilt to load a student.
  """
  workdir = epath.Path(workdir)
  if not (workdir / "config.json").exists():
    raise UserError(f"{workdir}: no config.json: not a training workdir")
  config = config_lib.from_json(workdir / "config.json")
  student = student_lib.build_student(config)
  tx = train_step_lib.make_optimizer(config)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  # Random values are enough for the restore target: every parameter is read from the checkpoint.
  state, shardings = train_step_lib.create_train_state(student.module, tx, config, mesh, jax.random.key(0))
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", async_save=False)
  try:
    # repair=False: a training run may be writing beside this read; an unreadable step is skipped, never moved.
    restored = checkpointer.restore_latest(state, shardings, repair=False)
  finally:
    checkpointer.close()
  if restored is None:
    raise UserError(f"{workdir}/checkpoints: no checkpoint to export")
  step, state, _ = restored
  return models.Encoder(module=student.module, params=jax.device_get(state.params), tokenizer=student.tokenizer,
                        config=student.module.config, extra=student.extra), step


def export(workdir: str, out: str) -> None:
  encoder, _ = load_student(workdir)
  models.save_pretrained(encoder, out)
