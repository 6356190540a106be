"""`optical-jax export`: the trained student of a workdir as a Hugging Face directory (transformers loads it)."""
from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from optical_jax import checkpointing
from optical_jax import sharding as sharding_lib
from optical_jax import train_step as train_step_lib
from optical_jax.data import training_data
from optical_jax.errors import UserError


def load_student(workdir: str):
  """The newest checkpoint's student as a `models.Encoder` (params on host)."""
  from optical_jax import models
  workdir = epath.Path(workdir)
  if not (workdir / "config.json").exists():
    raise UserError(f"{workdir}: no config.json: not a training workdir")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", async_save=False)
  step = checkpointer.latest_step()
  if step is None:
    raise UserError(f"{workdir}/checkpoints: no checkpoint to export")
  if config.student.init == "random":
    data = training_data.build(config, workdir)  # the tokenizer and dims come with the training data
    model, _ = training_data.build_student(config, data)
    tokenizer, extra = data.tokenizer, None
  else:
    # A pretrained student is its source directory's architecture, tokenizer, pooler and config fields (the student
    # never trains the last two, and they travel with the export); the training data is not needed to load it.
    source = models.from_pretrained(config.student.init, projection_dim=config.student.get("projection_dim", 0),
                                    normalize=bool(config.student.get("normalize", False)),
                                    dtype=config.student.get("dtype", "float32"))
    model, tokenizer, extra = models.BertEncoder(source.config), source.tokenizer, source.extra
  tx = train_step_lib.make_optimizer(config)
  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  state, shardings = train_step_lib.create_train_state(model, tx, config, mesh, jax.random.key(0))
  state, _ = checkpointer.restore(step, state, shardings)
  checkpointer.close()
  params = jax.device_get(state.params)
  return models.Encoder(module=model, params=params, tokenizer=tokenizer, config=model.config, extra=extra), step


def export(workdir: str, out: str) -> None:
  from optical_jax import models
  encoder, _ = load_student(workdir)
  models.save_pretrained(encoder, out)
