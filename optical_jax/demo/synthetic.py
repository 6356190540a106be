"""SYNTHETIC files for `optical-jax demo --setting tiny`: a made-up language pair, bitext and a test collection.

The "low-resource" side is English with every word replaced by a fixed made-up word (same order), so the pair is
perfectly aligned token for token. It exercises the whole text path (bitext file, teacher store, training,
evaluation, reports) in seconds with random tiny encoders; its numbers say nothing about real retrieval.
"""
from __future__ import annotations

import json
import os
import random

SUBJECTS = ("the farmer", "a child", "the teacher", "my mother", "the king", "a fisherman", "the doctor", "our friend",
            "the old woman", "a young man", "the soldier", "the trader")
VERBS = ("sees", "carries", "buys", "finds", "cooks", "sells", "brings", "loses", "washes", "builds", "paints",
         "counts")
OBJECTS = ("the river", "a goat", "fresh bread", "the house", "seven fish", "a red boat", "the field", "clean water",
           "a small basket", "the market", "three eggs", "the garden")
PLACES = ("in the morning", "near the lake", "at night", "after the rain", "in the village", "before the feast",
          "on the hill", "under the tree")
_SYLLABLES = ("ka", "mi", "to", "re", "su", "na", "lo", "pe", "zu", "di", "ya", "bo", "we", "fu", "sha", "ngi")


def _lexicon(seed: int) -> dict[str, str]:
  words = sorted({w for phrase in SUBJECTS + VERBS + OBJECTS + PLACES for w in phrase.split()})
  rng = random.Random(seed)
  out, used = {}, set()
  for w in words:
    while True:
      made_up = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
      if made_up not in used:
        used.add(made_up)
        out[w] = made_up
        break
  return out


def sentences(n: int, seed: int) -> list[tuple[str, str]]:
  """n distinct (low-resource, English) sentence pairs."""
  rng = random.Random(seed)
  lex = _lexicon(seed)
  seen, out = set(), []
  while len(out) < n:
    en = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
    if en in seen:
      continue
    seen.add(en)
    out.append((" ".join(lex[w] for w in en.split()), en))
  return out


def write_files(out_dir: str | os.PathLike, *, train_pairs: int = 512, test_pairs: int = 96, seed: int = 0
                ) -> dict[str, str]:
  """Writes bitext.tsv (training), queries.tsv, documents.jsonl, qrels.txt (held-out test); returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  pairs = sentences(train_pairs + test_pairs, seed)
  train, test = pairs[:train_pairs], pairs[train_pairs:]
  paths = {name: os.path.join(out_dir, name) for name in ("bitext.tsv", "queries.tsv", "documents.jsonl", "qrels.txt")}
  with open(paths["bitext.tsv"], "w", encoding="utf-8") as f:
    f.write("id\tsource\ttarget\n")
    f.writelines(f"train{i}\t{lr}\t{en}\n" for i, (lr, en) in enumerate(train))
  with open(paths["queries.tsv"], "w", encoding="utf-8") as f:
    f.writelines(f"q{i}\t{lr}\n" for i, (lr, _) in enumerate(test))
  with open(paths["documents.jsonl"], "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"id": f"d{i}", "text": en}) + "\n" for i, (_, en) in enumerate(test))
  with open(paths["qrels.txt"], "w", encoding="utf-8") as f:
    f.writelines(f"q{i} 0 d{i} 1\n" for i in range(len(test)))
  return paths
