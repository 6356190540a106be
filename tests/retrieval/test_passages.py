"""Documents as passages (window / stride in words) and passage scores back to documents (MaxP / FirstP)."""
import pytest

from optical_jax.errors import UserError
from optical_jax.retrieval import passages


def test_windows_cover_every_word_with_the_tail_kept():
  docs = {"a": " ".join(f"w{i}" for i in range(10)), "b": "short text"}
  texts, parent = passages.split(docs, window=4, stride=3)
  assert texts == {"a#0": "w0 w1 w2 w3", "a#1": "w3 w4 w5 w6", "a#2": "w6 w7 w8 w9", "b#0": "short text"}
  assert parent == {"a#0": "a", "a#1": "a", "a#2": "a", "b#0": "b"}
  texts, _ = passages.split(docs, window=4, stride=4)
  assert texts["a#2"] == "w6 w7 w8 w9"  # the stride stops at w8: the last window ends at the document's end
  first, _ = passages.split(docs, window=4, stride=2, aggregate="firstp")
  assert first == {"a#0": "w0 w1 w2 w3", "b#0": "short text"}
  whole, identity = passages.split(docs, window=0, stride=0)
  assert whole == docs and identity == {"a": "a", "b": "b"}


@pytest.mark.parametrize("window, stride, aggregate, message", [
    (4, 5, "maxp", "doc_stride"), (4, 0, "maxp", "doc_stride"), (4, 2, "sum", "doc_aggregate")])
def test_bad_settings_name_the_key(window, stride, aggregate, message):
  with pytest.raises(UserError, match=message):
    passages.split({"a": "x y"}, window, stride, aggregate)


def test_maxp_keeps_each_documents_best_passage():
  parent = {"a#0": "a", "a#1": "a", "b#0": "b", "c#0": "c"}
  ranked = [("a#1", 0.9), ("b#0", 0.8), ("a#0", 0.7), ("c#0", 0.1)]
  assert passages.to_documents(ranked, parent, k=10) == [("a", 0.9), ("b", 0.8), ("c", 0.1)]
  assert passages.to_documents(ranked, parent, k=2) == [("a", 0.9), ("b", 0.8)]
