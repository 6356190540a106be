"""BertEncoder on its own: padding invariance, bf16, head, sharding under an 8-device mesh, config round trip."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf
import transformers

from optical_jax.errors import UserError
from optical_jax.models import BertEncoder, Encoder, EncoderConfig
from optical_jax.models.hf import params_from_hf_state_dict, params_to_hf_state_dict

RULES = (
    ("act_batch", ("data", "fsdp")), ("act_length", None), ("act_embed", None), ("act_heads", "tensor"),
    ("act_mlp", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"),
)
TINY = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=40)


def _tiny(model_type: str = "bert", **kw) -> EncoderConfig:
  extra = dict(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1) if model_type == "xlm-roberta" else {}
  return EncoderConfig(model_type=model_type, **{**TINY, **extra, **kw})


def _random_encoder(config: EncoderConfig, seed: int = 0) -> Encoder:
  """Random weights without compiling an init: shapes from eval_shape, values from numpy. LayerNorm scales near 1,
  biases non-zero, so a mix-up of any two parameters shows in the outputs."""
  module = BertEncoder(config)
  ids = jnp.zeros((1, 4), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, s):
    offset = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(offset + rng.normal(0.0, 0.1, s.shape), jnp.float32)

  return Encoder(module, jax.tree_util.tree_map_with_path(draw, shapes), config)


def _batch(config: EncoderConfig, lengths, length: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids = rng.integers(3, config.vocab_size, (len(lengths), length)).astype(np.int32)
  return np.where(mask > 0, ids, config.pad_token_id).astype(np.int32), mask


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_padding_does_not_change_real_tokens(model_type):
  config = _tiny(model_type)
  enc = _random_encoder(config, seed=1)
  lengths = [9, 4, 1]
  ids, mask = _batch(config, lengths, 9)
  ids_long, mask_long = _batch(config, lengths, 20)
  ids_long[:, :9] = ids  # the same tokens, 11 more pads
  short, long = np.asarray(enc(ids, mask)), np.asarray(enc(ids_long, mask_long))
  for i, n in enumerate(lengths):  # row 0 of `short` has no padding at all
    np.testing.assert_allclose(long[i, :n], short[i, :n], atol=1e-5)


def test_matches_numpy_reference():
  """An independent numpy forward pass over the same weights (HF names) for a padded batch."""
  config = _tiny("bert")
  enc = _random_encoder(config, seed=3)
  ids, mask = _batch(config, [7, 3], 7)
  # The weights under their HF names, then back: the forward below reads HF names only.
  w = params_to_hf_state_dict(enc.params, config)
  enc.params = jax.tree.map(jnp.asarray, params_from_hf_state_dict(w, config))
  w = {k: v.astype(np.float64) for k, v in w.items()}

  def ln(x, k):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + config.layer_norm_eps) * w[k + ".weight"] + w[k + ".bias"]

  def lin(x, k):
    return x @ w[k + ".weight"].T + w[k + ".bias"]

  b, length = ids.shape
  x = ln(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
         + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
  nh, hd = config.num_heads, config.head_dim
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}."
    q, k, v = (lin(x, p + "attention.self." + n).reshape(b, length, nh, hd).transpose(0, 2, 1, 3)
               for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + np.where(mask[:, None, None] > 0, 0.0, -1e9)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, length, -1)
    x = ln(x + lin(o, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    h = lin(x, p + "intermediate.dense")
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
  np.testing.assert_allclose(np.asarray(enc(ids, mask)), x, atol=1e-4)


def test_bfloat16_compute_is_close_to_float32():
  config = _tiny("xlm-roberta")
  f32 = _random_encoder(config, seed=2)
  bf16 = BertEncoder(_tiny("xlm-roberta", dtype="bfloat16"))
  ids, mask = _batch(config, [12, 6], 12)
  ref = np.asarray(f32(ids, mask))
  out = bf16.apply({"params": f32.params}, ids, mask)
  assert out.dtype == jnp.float32
  assert jax.tree.leaves(f32.params)[0].dtype == jnp.float32
  diff = np.abs(np.asarray(out) - ref)
  assert diff.max() < 0.15 and diff.mean() < 0.03, (diff.max(), diff.mean())
  assert diff.max() > 0  # really computed in bf16


def test_projection_head_and_normalisation():
  config = _tiny("bert", projection_dim=16, normalize=True)
  enc = _random_encoder(config, seed=0)
  assert enc.params["projection"]["kernel"].shape == (32, 16)
  ids, mask = _batch(config, [5, 2], 6)
  hidden = np.asarray(enc(ids, mask))
  out = np.asarray(enc(ids, mask, head=True))
  assert hidden.shape == (2, 6, 32) and out.shape == (2, 6, 16) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
  proj = hidden @ np.asarray(enc.params["projection"]["kernel"]) + np.asarray(enc.params["projection"]["bias"])
  np.testing.assert_allclose(out, proj / np.linalg.norm(proj, axis=-1, keepdims=True), atol=1e-5)
  # normalize without a projection normalises the hidden states themselves
  plain = BertEncoder(_tiny("bert", normalize=True))
  params = {k: v for k, v in enc.params.items() if k != "projection"}
  normed = np.asarray(plain.apply({"params": params}, ids, mask, head=True))
  np.testing.assert_allclose(normed, hidden / np.linalg.norm(hidden, axis=-1, keepdims=True), atol=1e-5)


def test_sharded_init_and_apply_under_mesh():
  assert jax.device_count() == 8
  config = _tiny("bert", projection_dim=8)
  module = BertEncoder(config)
  ids, mask = _batch(config, [16, 3, 9, 1, 16, 7, 2, 12], 16)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)

  def init(key):
    return module.init(key, ids, mask)

  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    variables = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    params = nn.meta.unbox(variables)["params"]
    sharded_out = jax.jit(module.apply)({"params": params}, ids, mask)

  P = jax.sharding.PartitionSpec
  expected = {
      ("word_embeddings", "embedding"): P("tensor", "fsdp"),
      ("position_embeddings", "embedding"): P(None, "fsdp"),
      ("embeddings_norm", "scale"): P("fsdp"),
      ("layer_0", "qkv", "kernel"): P("fsdp", "tensor"),
      ("layer_0", "qkv", "bias"): P("tensor"),
      ("layer_1", "attention_out", "kernel"): P("tensor", "fsdp"),
      ("layer_1", "attention_out", "bias"): P("fsdp"),
      ("layer_1", "mlp_in", "kernel"): P("fsdp", "tensor"),
      ("layer_1", "mlp_in", "bias"): P("tensor"),
      ("layer_1", "mlp_out", "kernel"): P("tensor", "fsdp"),
      ("layer_1", "mlp_norm", "bias"): P("fsdp"),
      ("projection", "kernel"): P("fsdp", None),
  }
  for path, spec in expected.items():
    leaf = params
    for k in path:
      leaf = leaf[k]
    assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
  qkv = params["layer_0"]["qkv"]["kernel"]
  assert qkv.addressable_shards[0].data.shape == (16, 48)  # [H/fsdp, 3H/tensor]

  # Same params, no mesh, no rules: the logical constraints are no-ops and the result is the same.
  local = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params)
  assert sharded_out.sharding.spec[0] == ("data", "fsdp")
  local_out = jax.jit(module.apply)({"params": local}, ids, mask)
  np.testing.assert_allclose(np.asarray(sharded_out), np.asarray(local_out), atol=1e-5)


@pytest.mark.parametrize("model_type,hf_class", [("bert", transformers.BertConfig),
                                                 ("xlm-roberta", transformers.XLMRobertaConfig)])
def test_config_round_trips_through_transformers(model_type, hf_class):
  config = _tiny(model_type, projection_dim=8, normalize=True)
  d = config.to_hf_dict()
  hf = hf_class(**{k: v for k, v in d.items() if k != "model_type"})
  assert hf.model_type == model_type and hf.num_hidden_layers == 2 and hf.hidden_act == "gelu"
  again = EncoderConfig.from_hf_dict(hf.to_dict())
  assert again == config
  assert EncoderConfig.from_hf_dict(d, dtype="bfloat16").dtype == "bfloat16"


def test_config_errors():
  with pytest.raises(UserError, match="model_type"):
    EncoderConfig.from_hf_dict({"model_type": "gpt2"})
  with pytest.raises(UserError, match="hidden_act"):
    EncoderConfig.from_hf_dict({"model_type": "bert", "hidden_act": "relu"})
  with pytest.raises(UserError, match="num_heads"):
    EncoderConfig(hidden_size=30, num_heads=4)
  with pytest.raises(UserError, match="dtype"):
    EncoderConfig(dtype="float16")
  config = _tiny("xlm-roberta")  # 40 positions, 2 spent on the padding offset
  ids, mask = _batch(config, [39], 39)
  with pytest.raises(UserError, match="38 positions"):
    jax.eval_shape(BertEncoder(config).init, jax.random.key(0), ids, mask)
