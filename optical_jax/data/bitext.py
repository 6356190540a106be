"""The training bitext of a config: its sources read (tfds builders or files), optionally sampled down.

`data.bitext` names one source or several, comma-separated, each with an optional sampling weight:
`tfds:bible/sw_en@2,tfds:bible/bn_en@1` trains on both, drawing two Swahili pairs for each Bengali one (each source
reshuffled on its own; see pipeline.batch_index_dataset). precompute-teacher and train both read the bitext here,
so they always see the same examples in the same order: source by source, concatenated.

`SPEC[synthetic]` (before or after `@WEIGHT`) flags a source of synthetic pairs (back-translated, or written by
lexicon.write_word_by_word_bitext): it is read like any other, and the flag travels with it (`BitextSource`, the
run's data description), so runs with and without it can be told apart and compared.
"""
from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence

import ml_collections
import numpy as np
from etils import epath

from optical_jax.data.report import DataReport
from optical_jax.data.tfds_bitext import load_bitext
from optical_jax.errors import UserError

SYNTHETIC_FLAG = "[synthetic]"
_TFDS_LANGUAGE = re.compile(r"^tfds:[^/]+/([a-z]{2,3})_[a-z]{2,3}(?:_[a-z0-9]+)?$")


@dataclasses.dataclass(frozen=True)
class BitextSource:
  spec: str        # a tfds:NAME/CONFIG spec or a TSV/JSONL path / URI
  weight: float    # relative share of each global batch
  language: str    # the low-resource side's language, when the spec names it ("" otherwise)
  synthetic: bool = False  # flagged `[synthetic]`: machine-made pairs, not a human translation


def parse_sources(text: str) -> list[BitextSource]:
  """`data.bitext` -> its sources. `SPEC@WEIGHT` sets a weight (default 1); commas separate sources."""
  out = []
  for part in (p.strip() for p in str(text).split(",")):
    if not part:
      continue
    synthetic = part.endswith(SYNTHETIC_FLAG)
    part = part.removesuffix(SYNTHETIC_FLAG)
    spec, sep, weight_text = part.rpartition("@")
    weight = 1.0
    if sep and re.fullmatch(r"[0-9]*\.?[0-9]+(e-?[0-9]+)?", weight_text):
      weight = float(weight_text)
      if weight <= 0:
        raise UserError(f"data.bitext: the weight of {spec!r} must be > 0, got {weight_text}")
    else:
      spec = part
    if spec.endswith(SYNTHETIC_FLAG):
      synthetic, spec = True, spec.removesuffix(SYNTHETIC_FLAG)
    match = _TFDS_LANGUAGE.match(spec)
    out.append(BitextSource(spec, weight, match.group(1) if match else "", synthetic))
  if not out:
    raise UserError("data.bitext is empty; give a TSV/JSONL path or tfds:NAME/CONFIG (comma-separated for several)")
  specs = [s.spec for s in out]
  if len(set(specs)) != len(specs):
    raise UserError(f"data.bitext: a source is listed twice ({', '.join(specs)})")
  return out


def tfds_data_dir(config: ml_collections.ConfigDict, workdir) -> epath.Path:
  return epath.Path(config.data.tfds_data_dir or epath.Path(workdir) / "tfds")


@dataclasses.dataclass(frozen=True)
class TrainingBitext:
  examples: Sequence        # every source's examples, source by source
  sources: list[BitextSource]
  sizes: list[int]          # examples per source, in order


def load_training_sources(config: ml_collections.ConfigDict, workdir, report: DataReport | None = None
                          ) -> TrainingBitext:
  """Every source's training examples; `data.max_train_pairs` > 0 keeps a seeded random sample of that many pairs
  of each source. The sample depends only on (`data.sample_seed`, the source)."""
  sources = parse_sources(config.data.bitext)
  examples, sizes, seen = [], [], {}
  for source in sources:
    bitext = load_bitext(source.spec, split="train", data_dir=tfds_data_dir(config, workdir),
                         strict=bool(config.data.strict), report=report)
    limit = config.data.max_train_pairs
    if limit and limit < len(bitext):
      if config.data.nested_sample:  # a prefix of one seeded permutation: the 100-pair sample is in the 300-pair one
        rows = sorted(np.random.default_rng(config.data.sample_seed).permutation(len(bitext))[:limit].tolist())
      else:
        rows = sorted(random.Random(config.data.sample_seed).sample(range(len(bitext)), limit))
      bitext = [bitext[i] for i in rows]
    sizes.append(len(bitext))
    if len(sources) == 1:  # one source keeps its (lazy, random-access) form; a reader rejects duplicate ids itself
      return TrainingBitext(bitext, sources, sizes)
    for ex in bitext:
      if seen.setdefault(ex.id, source.spec) != source.spec:
        raise UserError(f"data.bitext: example id {ex.id!r} is in both {seen[ex.id]} and {source.spec}; ids must be "
                        "unique across sources")
    examples.extend(bitext)
  return TrainingBitext(examples, sources, sizes)


def teacher_keys(examples: Sequence) -> list[str]:
  """Each example's row in the teacher store: the id of the first example with the same English text.

  Sources that share an English side (Bible versions in several languages, all against the same English verses)
  then share its stored teacher tokens, so the teacher encodes each English text once.
  """
  first: dict[str, str] = {}
  return [first.setdefault(ex.target, ex.id) for ex in examples]


def load_training_bitext(config: ml_collections.ConfigDict, workdir, report: DataReport | None = None):
  """The training examples of every source, concatenated (see load_training_sources)."""
  return load_training_sources(config, workdir, report).examples
