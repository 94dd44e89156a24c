"""A GPT-2 checkpoint's geometry, read from its own config file."""

from __future__ import annotations

import dataclasses
from typing import Any


class CheckpointError(ValueError):
    """A GPT-2 checkpoint is missing, malformed, or disagrees with itself."""


class DownloadError(ConnectionError):
    """Fetching a checkpoint file from the Hub failed; nothing was cached."""


# GPTTokenizer's vocabulary: a converted model needs at least this many rows
# to take its ids. The last one is `<|endoftext|>`.
GPT2_VOCABULARY_SIZE = 50257
END_OF_TEXT_ID = GPT2_VOCABULARY_SIZE - 1

# `activation_function` values that are GPT-2's tanh-approximated GELU, the
# only one `GPTBackbone` builds (`gelu_new` and `gelu_pytorch_tanh` are the
# same function in `transformers`).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The geometry of a GPT-2 checkpoint.

    Built from the checkpoint's own config (`hparams.json` for OpenAI's
    folders, `config.json` for Hugging Face's), never from the model name, so
    any size loads: 124M, 355M, 774M, 1558M or your own.

    Args:
        vocab_size: int. Rows of `wte` (GPT-2: 50257).
        n_positions: int. Rows of `wpe`: the context length (GPT-2: 1024).
        n_embd: int. Hidden width.
        n_head: int. Attention heads; must divide `n_embd`.
        n_layer: int. Transformer blocks.
        n_inner: int or None. Feed-forward width; `None` means `4 * n_embd`.
        layer_norm_epsilon: float. GPT-2: 1e-5.
        dropout: float. Dropout of the converted model (not in OpenAI's
            hparams; GPT-2 trained with 0.1).
        tie_word_embeddings: bool. The output head is `wte` (always, for
            OpenAI's checkpoints).
    """

    vocab_size: int
    n_positions: int
    n_embd: int
    n_head: int
    n_layer: int
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.1
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for field in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CheckpointError(
                    f"GPT-2 config field {field} must be a positive int; got {value!r}."
                )
        if self.n_embd % self.n_head:
            raise CheckpointError(
                f"GPT-2 config has n_embd={self.n_embd}, not divisible by "
                f"n_head={self.n_head}."
            )

    @property
    def intermediate_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_openai_hparams(cls, hparams: dict[str, Any], source: str) -> GPT2Config:
        """From OpenAI's `hparams.json`: n_vocab, n_ctx, n_embd, n_head, n_layer."""
        keys = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")
        missing = [k for k in keys if k not in hparams]
        if missing:
            raise CheckpointError(
                f"{source} lacks {', '.join(missing)}; OpenAI's hparams.json has "
                f"{', '.join(keys)}."
            )
        return cls(
            vocab_size=hparams["n_vocab"],
            n_positions=hparams["n_ctx"],
            n_embd=hparams["n_embd"],
            n_head=hparams["n_head"],
            n_layer=hparams["n_layer"],
        )

    @classmethod
    def from_transformers(cls, config: dict[str, Any], source: str) -> GPT2Config:
        """From a Hugging Face `config.json` with `model_type: gpt2`.

        Options that change GPT-2's computation in ways `GPTBackbone` does
        not implement are refused rather than silently ignored.
        """
        if config.get("model_type") != "gpt2":
            raise CheckpointError(
                f"{source} has model_type {config.get('model_type')!r}, not "
                "'gpt2'; only GPT-2 checkpoints convert to GPTBackbone."
            )
        unsupported = []
        activation = config.get("activation_function", "gelu_new")
        if activation not in TANH_GELU:
            unsupported.append(f"activation_function={activation!r}")
        for flag, default in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
            ("add_cross_attention", False),
        ):
            if bool(config.get(flag, default)) != default:
                unsupported.append(f"{flag}={config[flag]!r}")
        if unsupported:
            raise CheckpointError(
                f"{source} sets {', '.join(unsupported)}; GPTBackbone implements "
                "GPT-2 as published (gelu_new, attention scaled by "
                "1/sqrt(head_dim), no cross-attention)."
            )
        positions = config.get("n_positions", config.get("n_ctx"))
        fields = {
            "vocab_size": config.get("vocab_size"),
            "n_positions": positions,
            "n_embd": config.get("n_embd"),
            "n_head": config.get("n_head"),
            "n_layer": config.get("n_layer"),
        }
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            raise CheckpointError(f"{source} lacks {', '.join(missing)}.")
        return cls(
            **fields,
            n_inner=config.get("n_inner"),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
            dropout=float(config.get("resid_pdrop", 0.1)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    @classmethod
    def from_backbone(cls, backbone: Any) -> GPT2Config:
        """The geometry of a `GPTBackbone`."""
        return cls(
            vocab_size=backbone.vocabulary_size,
            n_positions=backbone.max_sequence_length,
            n_embd=backbone.hidden_dim,
            n_head=backbone.num_heads,
            n_layer=backbone.num_layers,
            n_inner=backbone.intermediate_dim,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            dropout=backbone.dropout,
            tie_word_embeddings=backbone.tie_weights,
        )

    def to_openai_hparams(self) -> dict[str, int]:
        """OpenAI's `hparams.json` (which cannot express n_inner, epsilon or
        an untied head: those must be GPT-2's)."""
        if (
            self.intermediate_dim != 4 * self.n_embd
            or self.layer_norm_epsilon != 1e-5
            or not self.tie_word_embeddings
        ):
            raise CheckpointError(
                "OpenAI's hparams.json can only describe GPT-2's own layout "
                "(n_inner = 4 * n_embd, epsilon 1e-5, tied head)."
            )
        return {
            "n_vocab": self.vocab_size,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_layer": self.n_layer,
        }

    def to_transformers(self) -> dict[str, Any]:
        """A Hugging Face `config.json` for `GPT2LMHeadModel`."""
        end = self.end_of_text_id
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": None
            if self.n_inner in (None, 4 * self.n_embd)
            else self.n_inner,
            "activation_function": "gelu_new",
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "use_cache": True,
            "bos_token_id": end,
            "eos_token_id": end,
            "tie_word_embeddings": self.tie_word_embeddings,
        }

    @property
    def end_of_text_id(self) -> int | None:
        """GPT-2's `<|endoftext|>` id, 50256, or `None` if the vocabulary is smaller."""
        return END_OF_TEXT_ID if self.vocab_size >= GPT2_VOCABULARY_SIZE else None

    def backbone_kwargs(self) -> dict[str, Any]:
        """`GPTBackbone` arguments for this geometry (GPT-2 has qkv biases)."""
        return {
            "vocabulary_size": self.vocab_size,
            "num_layers": self.n_layer,
            "num_heads": self.n_head,
            "hidden_dim": self.n_embd,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.n_positions,
            "qkv_bias": True,
            "tie_weights": self.tie_word_embeddings,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }
