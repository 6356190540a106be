"""Cross-lingual retrieval: collection files, encoding (encode.py), exact search (MaxSim, cosine), TREC runs and
qrels, trec_eval metrics, and whole evaluation runs (evaluation.py)."""
