"""What `optical-jax export --format` writes beside the Hugging Face weights: a sentence-transformers layout, the
metadata other tools need (prompts, the paired teacher, the MaxSim token rule), and a model card.

- `hf`: config.json, model.safetensors, tokenizer files (transformers' AutoModel loads them), the projection head
  as optical_jax_head.safetensors, plus optical_jax.json and README.md.
- `sentence-transformers`: the same directory, loadable by `SentenceTransformer(DIR)`: Transformer -> mean Pooling
  (over every real token, prompt included: the E5 pooling our `pooled` scorer uses) -> Dense (the projection head,
  when there is one); prompts "query" (the student's prefix, the default) and "document" (the teacher's passage
  prefix); cosine similarity. sentence-transformers then gives the student's pooled embedding.
- `pylate`: the same directory as a PyLate ColBERT checkpoint (model_type "ColBERT": Transformer -> token-level
  Dense), which PyLate (>= 1.6) and sentence-transformers' `MultiVectorEncoder` load. Our MaxSim rules map onto its
  knobs: empty query_prefix / document_prefix (no [Q] / [D] marker token: the student never saw one), the student's
  prefix and the teacher's passage prefix as the "query" / "document" prompts, no query expansion (no [MASK]
  padding), no punctuation skiplist, query_length / document_length from eval.max_len_query / max_len_doc. Both
  libraries return every real token, in order; the positional part of our "content" rule (drop the leading special
  token, the prefix pieces and the final special token) has no knob in either, so optical_jax.json's
  `query_token_slice` says which rows of each query's vectors to score.

optical_jax.json records how to score with MaxSim, which sentence-transformers' single vector cannot do: which
tokens take part (`maxsim_tokens`), the query and passage prefixes, and the teacher whose document vectors the
student's tokens were aligned to (path and checksum): query vectors of this student only make sense against
documents that teacher encoded (its last hidden states, through its linear head if it is a ColBERT checkpoint):
a multi-vector library encoding documents with
this student gets vectors the student was never scored against.
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
from optical_jax.data.tokens import prefix_length
from optical_jax.errors import UserError

FORMATS = ("hf", "sentence-transformers", "pylate")
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
    _write_dense(encoder, out / "2_Dense", {"module_input_name": "sentence_embedding",
                                            "module_output_name": "sentence_embedding"})
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


def _write_dense(encoder: models.Encoder, folder: epath.Path, extra: dict[str, Any]) -> None:
  """The projection head (kernel + bias, no activation) as a sentence-transformers / PyLate Dense folder; without
  a head, the identity, so that a loader that insists on a Dense (PyLate adds a random one) gets our vectors."""
  config = encoder.config
  if config.projection_dim:
    head = jax.device_get(nn.meta.unbox(encoder.params)["projection"])
    kernel, bias = np.asarray(head["kernel"], np.float32), np.asarray(head["bias"], np.float32)
  else:
    kernel, bias = np.eye(config.hidden_size, dtype=np.float32), np.zeros(config.hidden_size, np.float32)
  folder.mkdir(parents=True, exist_ok=True)
  folder.joinpath("config.json").write_text(json.dumps(
      {"in_features": kernel.shape[0], "out_features": kernel.shape[1], "bias": True,
       "activation_function": "torch.nn.modules.linear.Identity", **extra}, indent=2) + "\n")
  weights = {"linear.weight": np.ascontiguousarray(kernel.T), "linear.bias": np.ascontiguousarray(bias)}
  folder.joinpath("model.safetensors").write_bytes(safetensors.numpy.save(weights, metadata={"format": "pt"}))


def query_token_slice(encoder: models.Encoder, metadata: dict[str, Any]) -> dict[str, Any]:
  """Which of a query's token vectors, as a multi-vector library returns them (every real token, in order), our
  MaxSim scores: the positional "content" rule as a Python slice."""
  if metadata["maxsim_tokens"] != "content":
    return {"start": 0, "stop": None, "rule": "every real token"}
  # The count encode_texts drops, measured the same way on the same tokenizer, so the rows are the same ones.
  skip = 1 + prefix_length(encoder.tokenizer, metadata["query_prefix"]) if encoder.tokenizer is not None else 1
  return {"start": skip, "stop": -1,
          "rule": f"without the leading special token, the {skip - 1} prefix pieces and the final special token; "
                  "a query left with none keeps all of them"}


def write_pylate(encoder: models.Encoder, out: epath.Path, metadata: dict[str, Any]) -> None:
  """A PyLate ColBERT checkpoint around the HF directory already written at `out`; adds `query_token_slice` to
  `metadata` (and rewrites optical_jax.json) since neither PyLate nor sentence-transformers can drop tokens by
  position."""
  # PyLate's own layout, no more: PyLate drops every module but Transformer and Dense, and MultiVectorEncoder maps
  # pylate.models.Dense.Dense to its Dense and appends the scoring mask and the token-level normalisation itself.
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]
  _write_dense(encoder, out / "1_Dense", {})  # PyLate's Dense takes no module_input_name; ST's loader supplies it
  (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
  # The pre-6 format: PyLate pins sentence-transformers 5.3, whose Transformer rejects the 6.x keys.
  longest = max(metadata["max_len_query"], metadata["max_len_doc"])  # query_length / document_length cut below it
  (out / "sentence_bert_config.json").write_text(json.dumps(
      {"max_seq_length": longest, "do_lower_case": False}, indent=2) + "\n")
  (out / "config_sentence_transformers.json").write_text(json.dumps(
      {"model_type": "ColBERT",
       # Text prompts, not marker tokens: "" turns PyLate's [Q] / [D] insertion off (MultiVectorEncoder likewise).
       "prompts": {"query": metadata["query_prefix"], "document": metadata["passage_prefix"]},
       "default_prompt_name": None, "query_prefix": "", "document_prefix": "",
       "query_length": metadata["max_len_query"], "document_length": metadata["max_len_doc"],
       # The student was trained and evaluated without [MASK] query padding; PyLate's default is to add it.
       "do_query_expansion": False, "attend_to_expansion_tokens": False,
       # Our MaxSim keeps punctuation; PyLate's default skiplist would drop it from documents.
       "skiplist_words": [],
       # PyLate accepts only "MaxSim" (the sum); our mean is the sum over the scored query tokens divided by their
       # count, the same ranking (MultiVectorEncoder's "meanmaxsim" is our mean).
       "similarity_fn_name": "MaxSim"}, indent=2) + "\n")
  tokenizer_config = out / "tokenizer_config.json"
  if tokenizer_config.exists():
    settings = json.loads(tokenizer_config.read_text())
    settings["model_max_length"] = longest
    tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")
  metadata["query_token_slice"] = query_token_slice(encoder, metadata)
  write_metadata(out, metadata)


def _pylate_card(metadata: dict[str, Any]) -> list[str]:
  teacher, window = metadata["teacher"]["path"], metadata["query_token_slice"]
  rows = f"[{window['start']}:{'' if window['stop'] is None else window['stop']}]"
  return ["## Multi-vector use (PyLate, sentence-transformers MultiVectorEncoder)", "",
          "- Load: `pylate.models.ColBERT(DIR)` (PyLate >= 1.6: an empty query_prefix inserts no [Q] token) or "
          "`sentence_transformers.MultiVectorEncoder(DIR)`.",
          "- Queries: `model.encode(queries, is_query=True, prompt_name=\"query\")` (PyLate) or "
          f"`model.encode_query(queries)`: the prompt is the student's prefix {metadata['query_prefix']!r}; no [Q] "
          f"marker, no [MASK] query expansion, at most {metadata['max_len_query']} tokens.",
          f"- Score each query's vectors{rows} only ({window['rule']}): both libraries return every real token, "
          "and which of them our MaxSim uses is a matter of position, not of token id. Our score is the mean over "
          "those query vectors of the best cosine over the document's vectors; PyLate's MaxSim and "
          "MultiVectorEncoder's default `maxsim` sum instead (the same ranking), MultiVectorEncoder's `meanmaxsim` "
          "(or `similarity(..., length_normalize=True)`) gives our score.",
          f"- Documents: this is a query encoder. Score against the paired teacher `{teacher}`'s document token "
          f"vectors (its last hidden states, through its linear head if it is a ColBERT checkpoint, prefix "
          f"{metadata['passage_prefix']!r}, at most "
          f"{metadata['max_len_doc']} tokens, {metadata['maxsim_tokens']} tokens as above), e.g. from "
          "`optical-jax index`. `encode(..., is_query=False)` / `encode_document` here would encode documents "
          "with the student, which is not what it was trained or evaluated against: the \"document\" prompt and "
          "document_length are only there to make the checkpoint complete.", ""]


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
  if fmt == "pylate":
    lines += _pylate_card(metadata)
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
