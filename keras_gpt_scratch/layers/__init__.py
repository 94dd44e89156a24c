"""The from-scratch layers, in the order the book builds them."""

from keras_gpt_scratch.layers.causal_self_attention import CausalSelfAttention
from keras_gpt_scratch.layers.feed_forward import FeedForward
from keras_gpt_scratch.layers.gelu import GELU
from keras_gpt_scratch.layers.layer_norm import LayerNorm
from keras_gpt_scratch.layers.linear import Linear
from keras_gpt_scratch.layers.multi_head_attention import MultiHeadAttention
from keras_gpt_scratch.layers.position_embedding import PositionEmbedding
from keras_gpt_scratch.layers.self_attention import SelfAttention
from keras_gpt_scratch.layers.token_embedding import TokenEmbedding
from keras_gpt_scratch.layers.transformer_block import TransformerBlock

__all__ = [
    "GELU",
    "CausalSelfAttention",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "MultiHeadAttention",
    "PositionEmbedding",
    "SelfAttention",
    "TokenEmbedding",
    "TransformerBlock",
]
