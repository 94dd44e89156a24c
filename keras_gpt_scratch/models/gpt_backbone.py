from typing import Any

import keras
from keras import ops
from keras_hub.models import Backbone

from keras_gpt_scratch.io_utils import atomic_file
from keras_gpt_scratch.layers.layer_norm import LayerNorm
from keras_gpt_scratch.layers.linear import SyncsInt8Kernels
from keras_gpt_scratch.layers.position_embedding import PositionEmbedding
from keras_gpt_scratch.layers.token_embedding import TokenEmbedding
from keras_gpt_scratch.layers.transformer_block import TransformerBlock
from keras_gpt_scratch.models import gpt_presets

# The book's GPT_CONFIG dict keys -> our (keras_hub GPT-2) argument names.
BOOK_CONFIG_KEYS = {
    "vocab_size": "vocabulary_size",
    "context_length": "max_sequence_length",
    "emb_dim": "hidden_dim",
    "n_heads": "num_heads",
    "n_layers": "num_layers",
    "drop_rate": "dropout",
    "qkv_bias": "qkv_bias",
}


def _gpt2_initializer(stddev=0.02):
    return keras.initializers.RandomNormal(stddev=stddev)


def _initializers(init: str) -> dict:
    """Weight initializers: GPT-2's, or PyTorch's defaults as the book uses.

    GPT-2 draws every weight from N(0, 0.02) (positions N(0, 0.01)). The
    book's `GPTModel` keeps PyTorch's defaults: `nn.Embedding` N(0, 1) and
    `nn.Linear` U(+-1/sqrt(fan_in)) (biases start at zero here).
    """
    if init == "gpt2":
        return {
            "token": _gpt2_initializer(),
            "position": _gpt2_initializer(0.01),
            "kernel": _gpt2_initializer(),
            "head": _gpt2_initializer(),
        }
    if init == "torch":
        linear = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")
        normal = keras.initializers.RandomNormal(stddev=1.0)
        return {"token": normal, "position": normal, "kernel": linear, "head": linear}
    raise ValueError(f"init must be 'gpt2' or 'torch'; got {init!r}.")


@keras.saving.register_keras_serializable(package="keras_gpt_scratch")
class GPTBackbone(SyncsInt8Kernels, gpt_presets.PresetMixin, Backbone):
    """GPT-2 written from scratch (the book's `GPTModel`, without the head).

    Token ids go through the token and position embeddings, dropout,
    `num_layers` pre-LayerNorm `TransformerBlock`s and a final `LayerNorm`.
    The output is the final hidden states; `GPTCausalLM` turns them into
    next-token logits through `backbone.token_embedding(x, reverse=True)`.

    The arguments follow keras_hub's `GPT2Backbone`; build from the book's
    `GPT_CONFIG_124M` dict with `GPTBackbone.from_book_config(cfg)`, or from a
    named preset with `GPTBackbone.from_preset("gpt_tiny")`.

    Args:
        vocabulary_size: int. Size of the token vocabulary (GPT-2: 50257).
        num_layers: int. Number of transformer blocks.
        num_heads: int. Attention heads per block; must divide `hidden_dim`.
        hidden_dim: int. Width of the embeddings and hidden states.
        intermediate_dim: int. Inner width of the feed-forward blocks.
            Defaults to `4 * hidden_dim`.
        dropout: float. Dropout rate for embeddings, attention weights and
            shortcut branches.
        max_sequence_length: int. The context length: the longest sequence
            the position embedding covers.
        qkv_bias: bool. Bias on the query/key/value projections (GPT-2's
            released weights have one; the book's from-scratch model not).
        tie_weights: bool. Share the token embedding with the output head
            (GPT-2) rather than learning a separate head (the book's model).
        layer_norm_epsilon: float. GPT-2 uses 1e-5.
        init: `"gpt2"` (N(0, 0.02) weights, GPT-2's scheme) or `"torch"`
            (PyTorch's defaults, as the book's from-scratch model gets them).
        dtype: the dtype policy, e.g. `"float32"`, `"bfloat16"` or
            `"mixed_bfloat16"`.

    Call arguments:
        inputs: a dict with `"token_ids"` (int, `(batch, sequence)`) and
            `"padding_mask"` (`(batch, sequence)`, 1 for real tokens).

    Example:
    ```python
    backbone = keras_gpt_scratch.GPTBackbone(
        vocabulary_size=50257, num_layers=2, num_heads=2, hidden_dim=64,
        max_sequence_length=128,
    )
    hidden = backbone({
        "token_ids": np.array([[15496, 11, 995]]),
        "padding_mask": np.array([[1, 1, 1]]),
    })  # (1, 3, 64)
    ```
    """

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int | None = None,
        dropout: float = 0.1,
        max_sequence_length: int = 1024,
        qkv_bias: bool = True,
        tie_weights: bool = True,
        layer_norm_epsilon: float = 1e-5,
        init: str = "gpt2",
        dtype=None,
        **kwargs,
    ):
        init_fns = _initializers(init)
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads "
                f"({num_heads}); each head gets hidden_dim // num_heads "
                "features. Change one of them."
            )
        intermediate_dim = intermediate_dim or 4 * hidden_dim

        # === Layers ===
        self.token_embedding = TokenEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_weights,
            embeddings_initializer=init_fns["token"],
            head_initializer=init_fns["head"],
            dtype=dtype,
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(
            max_sequence_length,
            initializer=init_fns["position"],
            dtype=dtype,
            name="position_embedding",
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            TransformerBlock(
                num_heads,
                intermediate_dim,
                dropout=dropout,
                qkv_bias=qkv_bias,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=init_fns["kernel"],
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.layer_norm = LayerNorm(layer_norm_epsilon, dtype=dtype, name="layer_norm")

        # === Functional Model ===
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        tokens = self.token_embedding(token_ids)  # (B, T, C)
        positions = self.position_embedding(tokens)  # (T, C)
        x = self.embeddings_dropout(ops.add(tokens, positions))
        for block in self.transformer_layers:
            x = block(x, padding_mask=padding_mask)
        outputs = self.layer_norm(x)
        super().__init__(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=outputs,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.qkv_bias = qkv_bias
        self.tie_weights = tie_weights
        self.layer_norm_epsilon = layer_norm_epsilon
        self.init = init

    @classmethod
    def from_book_config(cls, config: dict[str, Any], **kwargs) -> "GPTBackbone":
        """Build from the book's config dict, e.g. `GPT_CONFIG_124M`.

        The book's keys (`vocab_size`, `context_length`, `emb_dim`, `n_heads`,
        `n_layers`, `drop_rate`, `qkv_bias`) map onto this class' arguments.
        The book's model has a separate output head and PyTorch's default
        initialisation, so `tie_weights` defaults to False and `init` to
        `"torch"` here; pass `tie_weights=True, init="gpt2"` for GPT-2's.
        """
        unknown = sorted(set(config) - set(BOOK_CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown keys in the book config: {unknown}. Expected a subset "
                f"of {sorted(BOOK_CONFIG_KEYS)}."
            )
        args = {BOOK_CONFIG_KEYS[k]: v for k, v in config.items()}
        args.setdefault("tie_weights", False)
        args.setdefault("qkv_bias", False)
        args.setdefault("init", "torch")
        args.update(kwargs)
        return cls(**args)

    @classmethod
    def _from_builtin(cls, name, spec, load_weights, **kwargs):
        if load_weights and spec.get("weights"):
            # GPT-2's real weights: downloaded, converted and cached once.
            from keras_gpt_scratch.weights import from_builtin_preset

            return from_builtin_preset(cls, name, spec, **kwargs)
        if load_weights:
            gpt_presets.warn_fresh_weights(name, spec)
        return cls(**{**spec["backbone"], **kwargs})

    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`, written to a temporary file then renamed."""
        with atomic_file(filepath) as tmp:
            super().save(tmp, *args, **kwargs)

    def export_to_transformers(self, path) -> None:
        """Writes the weights as a Hugging Face GPT-2 model folder.

        `config.json`, `model.safetensors` and `generation_config.json`,
        which `transformers.GPT2LMHeadModel.from_pretrained(path)` loads and
        which give the same logits; weights in float32. Tokenizer files are
        not written: `GPTCausalLM.export_to_transformers` writes both, as in
        keras_hub. See `keras_gpt_scratch.weights.export_backbone`.

        Args:
            path: the output folder; created if needed. Files of the names
                above are replaced (each atomically), others left alone.

        Example:
        ```python
        backbone = keras_gpt_scratch.GPTBackbone.from_preset("gpt2_124m")
        backbone.export_to_transformers("gpt2-hf")
        model = transformers.GPT2LMHeadModel.from_pretrained("gpt2-hf")
        ```
        """
        from keras_gpt_scratch.weights import export_backbone

        export_backbone(self, path)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "max_sequence_length": self.max_sequence_length,
                "qkv_bias": self.qkv_bias,
                "tie_weights": self.tie_weights,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "init": self.init,
            }
        )
        return config

    def enable_lora(self, rank: int, target_layer_names: list[str] | None = None):
        """keras_hub's `enable_lora`, with its arguments checked first.

        Adapts `"query"` and `"value"` by default; also `"key"`,
        `"intermediate_dense"` and `"output_dense"` (the attention output and
        FeedForward's second layer) on request. Only the adapters train. See
        `keras_gpt_scratch.lora`.
        """
        from keras_gpt_scratch import lora

        targets = lora.check_lora_targets(self, rank, target_layer_names)
        super().enable_lora(rank, target_layer_names=targets)
        lora.freeze_adapted_biases(self)
