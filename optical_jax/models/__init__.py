"""The student/teacher encoder (Flax BERT / XLM-R) and its Hugging Face directory I/O."""
from optical_jax.models.bert import BertEncoder, EncoderConfig
from optical_jax.models.hf import Encoder, from_pretrained, random_encoder, save_pretrained

__all__ = ["BertEncoder", "Encoder", "EncoderConfig", "from_pretrained", "random_encoder", "save_pretrained"]
