"""The training bitext of a config: the seeded training-pair sample (data.max_train_pairs)."""
import pytest

from optical_jax import config as config_lib
from optical_jax.data.bitext import load_training_bitext
from optical_jax.errors import UserError


def _config(path, limit, seed=0):
  overrides = [f"data.bitext={path}", f"data.max_train_pairs={limit}", f"data.sample_seed={seed}"]
  return config_lib.load_config("configs/tiny.py:text", overrides)


def test_max_train_pairs_is_a_seeded_sample(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("".join(f"p{i}\tchanzo {i}\tsource {i}\n" for i in range(50)))
  every = load_training_bitext(_config(path, 0), tmp_path)
  assert [ex.id for ex in every] == [f"p{i}" for i in range(50)]
  some = load_training_bitext(_config(path, 20), tmp_path)
  ids = [ex.id for ex in some]
  assert len(set(ids)) == 20 and ids == [ex.id for ex in load_training_bitext(_config(path, 20), tmp_path)]
  assert ids == sorted(ids, key=lambda i: int(i[1:]))  # source order kept
  assert ids != [ex.id for ex in load_training_bitext(_config(path, 20, seed=1), tmp_path)]
  assert len(load_training_bitext(_config(path, 500), tmp_path)) == 50
  with pytest.raises(UserError, match="max_train_pairs"):
    _config(path, -1)
