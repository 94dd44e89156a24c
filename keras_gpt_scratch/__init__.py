"""keras-gpt-scratch: GPT-2 from scratch in Keras 3, packaged like KerasHub."""

from keras_gpt_scratch.backend import select_tensorflow_backend

select_tensorflow_backend()

from keras_gpt_scratch import data, hub  # noqa: E402
from keras_gpt_scratch.generation import generate, generate_text  # noqa: E402
from keras_gpt_scratch.layers import (  # noqa: E402
    GELU,
    CausalSelfAttention,
    FeedForward,
    LayerNorm,
    Linear,
    MultiHeadAttention,
    PositionEmbedding,
    SelfAttention,
    TokenEmbedding,
    TransformerBlock,
)
from keras_gpt_scratch.losses import CrossEntropy  # noqa: E402
from keras_gpt_scratch.models.gpt_backbone import GPTBackbone  # noqa: E402
from keras_gpt_scratch.models.gpt_causal_lm import GPTCausalLM  # noqa: E402
from keras_gpt_scratch.models.gpt_causal_lm_preprocessor import (  # noqa: E402
    GPTCausalLMPreprocessor,
)
from keras_gpt_scratch.models.gpt_classifier import GPTClassifier  # noqa: E402
from keras_gpt_scratch.models.gpt_classifier_preprocessor import (  # noqa: E402
    GPTClassifierPreprocessor,
)
from keras_gpt_scratch.optimizers import TorchAdamW  # noqa: E402
from keras_gpt_scratch.tokenizers import GPTTokenizer, SimpleTokenizer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CrossEntropy",
    "GELU",
    "CausalSelfAttention",
    "FeedForward",
    "GPTBackbone",
    "GPTCausalLM",
    "GPTCausalLMPreprocessor",
    "GPTClassifier",
    "GPTClassifierPreprocessor",
    "GPTTokenizer",
    "SimpleTokenizer",
    "TorchAdamW",
    "LayerNorm",
    "Linear",
    "MultiHeadAttention",
    "PositionEmbedding",
    "SelfAttention",
    "TokenEmbedding",
    "TransformerBlock",
    "data",
    "hub",
    "generate",
    "generate_text",
]
