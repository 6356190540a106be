"""Cross-lingual retrieval evaluation: document index, exact search (MaxSim, cosine), TREC files, trec_eval metrics."""
from optical_jax.retrieval.collection import Collection, encode_texts, evaluate_system, load_collection, read_texts
from optical_jax.retrieval.index import DocumentIndex, build_index, pool_embeddings
from optical_jax.retrieval.metrics import DEFAULT_METRICS, evaluate_run, parse_metric
from optical_jax.retrieval.search import cosine_scores, maxsim_scores, search
from optical_jax.retrieval.trec import rank_documents, read_qrels, read_run, write_qrels, write_run

__all__ = [
    "Collection", "DEFAULT_METRICS", "DocumentIndex", "build_index", "cosine_scores", "encode_texts", "evaluate_run",
    "evaluate_system", "load_collection", "maxsim_scores", "parse_metric", "pool_embeddings", "rank_documents",
    "read_qrels", "read_run", "read_texts", "search", "write_qrels", "write_run",
]
