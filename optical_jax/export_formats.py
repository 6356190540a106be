"""What `optical-jax export --format` writes beside the Hugging Face weights: a sentence-transformers layout, the
metadata other tools need (prompts, the paired teacher, the MaxSim token rule), and a model card.

- `hf`: config.json, model.safetensors, tokenizer files (transformers' AutoModel loads them), the projection head
  as optical_jax_head.safetensors, plus optical_jax.json and README.md.
- `sentence-transformers`: the same directory, loadable by `SentenceTransformer(DIR)`: Transformer -> mean Pooling
  (over every real token, prompt included: the E5 pooling our `pooled` scorer uses) -> Dense (the projection head,
  when there is one); prompts "query" (the student's prefix, the default) and "document" (the teacher's passage
  prefix); cosine similarity. sentence-transformers then gives the student's pooled embedding.

optical_jax.json records how to score with MaxSim, which sentence-transformers' single vector cannot do: which
tokens take part (`maxsim_tokens`), the query and passage prefixes, and the teacher whose document vectors the
student's tokens were aligned to (path and checksum): query vectors of this student only make sense against
documents that teacher encoded.
"""
from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import safetensors.numpy
from etils import epath

from optical_jax import models
from optical_jax.errors import UserError

FORMATS = ("hf", "sentence-transformers")
METADATA_FILE = "optical_jax.json"


def write_metadata(out: epath.Path, metadata: dict[str, Any]) -> None:
  (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def write_sentence_transformers(encoder: models.Encoder, out: epath.Path, *, query_prefix: str, passage_prefix: str,
                                max_len: int) -> None:
  """modules.json and the module folders around the HF directory already written at `out`."""
  config = encoder.config
  if config.normalize:
    raise UserError("--format sentence-transformers: this student L2-normalises every token before pooling, which "
                    "sentence-transformers' Pooling cannot reproduce; export --format hf")
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]
  (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
  (out / "1_Pooling" / "config.json").write_text(json.dumps(
      {"embedding_dimension": config.hidden_size, "pooling_mode": "mean", "include_prompt": True}, indent=2) + "\n")
  if config.projection_dim:
    # Affine maps commute with the mean: Dense(mean(tokens)) == mean(Dense(tokens)), our pooled vector.
    head = jax.device_get(nn.meta.unbox(encoder.params)["projection"])
    (out / "2_Dense").mkdir(parents=True, exist_ok=True)
    (out / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": config.hidden_size, "out_features": config.projection_dim, "bias": True,
         "activation_function": "torch.nn.modules.linear.Identity", "module_input_name": "sentence_embedding",
         "module_output_name": "sentence_embedding"}, indent=2) + "\n")
    weights = {"linear.weight": np.ascontiguousarray(np.asarray(head["kernel"], np.float32).T),
               "linear.bias": np.ascontiguousarray(np.asarray(head["bias"], np.float32))}
    (out / "2_Dense" / "model.safetensors").write_bytes(safetensors.numpy.save(weights, metadata={"format": "pt"}))
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"})
  (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
  (out / "sentence_bert_config.json").write_text(json.dumps(
      {"transformer_task": "feature-extraction",
       "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
       "module_output_name": "token_embeddings"}, indent=2) + "\n")
  (out / "config_sentence_transformers.json").write_text(json.dumps(
      {"model_type": "SentenceTransformer", "prompts": {"query": query_prefix, "document": passage_prefix},
       "default_prompt_name": "query", "similarity_fn_name": "cosine"}, indent=2) + "\n")
  tokenizer_config = out / "tokenizer_config.json"
  if tokenizer_config.exists():  # sentence-transformers reads its max_seq_length here
    settings = json.loads(tokenizer_config.read_text())
    settings["model_max_length"] = max_len
    tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")


def model_card(metadata: dict[str, Any], evaluation: dict[str, Any] | None, fmt: str) -> str:
  """README.md: what the model is, how to load it, its evaluation table, and where pooled scoring is weaker."""
  system = metadata["system"]
  lines = [f"# optical_jax student `{system}`", "",
           f"A low-resource query encoder trained by optical_jax (OPTICAL: optimal-transport token alignment with an "
           f"English retrieval teacher) to step {metadata['step']}, weights mixed {metadata['mix']:g} x trained + "
           f"{1 - metadata['mix']:g} x untrained. Queries take the prefix {metadata['query_prefix']!r}; the "
           f"documents must be encoded by the paired teacher `{metadata['teacher']['path']}` (sha256 "
           f"{metadata['teacher']['checksum'][:12]}...) with the prefix {metadata['passage_prefix']!r}.", "",
           "## Scoring", "",
           f"- MaxSim (ColBERT late interaction, the scorer the student was trained for): mean over the query's "
           f"{metadata['maxsim_tokens']} tokens of the best cosine over the document's {metadata['maxsim_tokens']} "
           f"tokens ({metadata['maxsim_rule']}). optical_jax.json records the rule.",
           "- Pooled: cosine of mean-pooled vectors (every real token)."
           + (" This is what `SentenceTransformer(DIR).encode(texts)` returns." if fmt == "sentence-transformers"
              else ""), ""]
  if evaluation:
    rows = []
    weaker = []
    for collection in evaluation["collections"]:
      scores = {s: evaluation["systems"].get(f"{system}_{s}", {}).get(collection, {}) for s in ("maxsim", "pooled")}
      if not scores["maxsim"]:
        continue
      rows.append(f"| {collection} | {scores['maxsim'].get('mrr@10', float('nan')):.3f} | "
                  f"{scores['pooled'].get('mrr@10', float('nan')):.3f} | {scores['maxsim'].get('ndcg@10', 0):.3f} | "
                  f"{scores['pooled'].get('ndcg@10', float('nan')):.3f} |")
      if scores["pooled"] and scores["pooled"].get("mrr@10", 0) < scores["maxsim"].get("mrr@10", 0):
        weaker.append(collection)
    lines += ["## Evaluation (optical-jax evaluate, from the workdir's eval/metrics.json)", "",
              "| collection | MRR@10 MaxSim | MRR@10 pooled | nDCG@10 MaxSim | nDCG@10 pooled |", "|---|---|---|---|---|",
              *rows, ""]
    if weaker:
      lines += [f"Pooled scoring is weaker than MaxSim on {', '.join(weaker)}: use MaxSim where you can (the "
                "single-vector sentence-transformers embedding is the pooled one).", ""]
  else:
    lines += ["## Evaluation", "", "The workdir had no evaluation (run `optical-jax evaluate` before exporting).", ""]
  return "\n".join(lines)
