"""GPT-2's weight names: one table shared by every reader and writer.

The canonical name of a tensor is OpenAI's variable name without its `model/`
scope, as nanoGPT does it: `wte`, `wpe`, `h{i}/ln_1/g`, `h{i}/attn/c_attn/w`,
..., `ln_f/b`. Shapes are OpenAI's (and Hugging Face's: its `Conv1D` keeps
OpenAI's `(in, out)` layout), with the leading 1 of OpenAI's `w` tensors
squeezed away. Each reader maps its file's names to these, and
`GPTBackbone`'s weights are named here once (`keras_targets`), so the
OpenAI, Hugging Face and Keras sides can only disagree in this file.

| canonical         | OpenAI TF checkpoint     | Hugging Face safetensors     | Keras (GPTBackbone)                                  |
|-------------------|--------------------------|------------------------------|------------------------------------------------------|
| `wte`             | `model/wte`              | `wte.weight`                 | `token_embedding/embeddings`                         |
| `wpe`             | `model/wpe`              | `wpe.weight`                 | `position_embedding/embeddings`                      |
| `h{i}/ln_1/g, b`  | `model/h{i}/ln_1/g, b`   | `h.{i}.ln_1.weight, bias`    | `transformer_layer_{i}/attention_norm/scale, shift`  |
| `h{i}/attn/c_attn/w, b` | `model/h{i}/attn/c_attn/w, b` (w: `(1, C, 3C)`) | `h.{i}.attn.c_attn.weight, bias` | `.../attention/{query,key,value}/kernel, bias` (thirds) |
| `h{i}/attn/c_proj/w, b` | same pattern       | `h.{i}.attn.c_proj.*`        | `.../attention/output_dense/kernel, bias`            |
| `h{i}/ln_2/g, b`  | same pattern             | `h.{i}.ln_2.*`               | `.../feed_forward_norm/scale, shift`                 |
| `h{i}/mlp/c_fc/w, b` | same pattern          | `h.{i}.mlp.c_fc.*`           | `.../feed_forward/intermediate_dense/kernel, bias`   |
| `h{i}/mlp/c_proj/w, b` | same pattern        | `h.{i}.mlp.c_proj.*`         | `.../feed_forward/output_dense/kernel, bias`         |
| `ln_f/g, b`       | `model/ln_f/g, b`        | `ln_f.weight, bias`          | `layer_norm/scale, shift`                            |
| `lm_head` (untied only) | —                  | `lm_head.weight` `(V, C)`    | `token_embedding/reverse_embeddings` `(C, V)`, transposed |

Hugging Face files may prefix every name with `transformer.` (what
`GPT2LMHeadModel.save_pretrained` writes) or not (OpenAI's repos on the Hub).
"""

from __future__ import annotations

from typing import Any

# Per-block parameters, relative to `h{i}/`, in OpenAI's order.
BLOCK_PARAMS = (
    "ln_1/g",
    "ln_1/b",
    "attn/c_attn/w",
    "attn/c_attn/b",
    "attn/c_proj/w",
    "attn/c_proj/b",
    "ln_2/g",
    "ln_2/b",
    "mlp/c_fc/w",
    "mlp/c_fc/b",
    "mlp/c_proj/w",
    "mlp/c_proj/b",
)
GLOBAL_PARAMS = ("wte", "wpe", "ln_f/g", "ln_f/b")

# The untied output head: not in OpenAI's checkpoints (GPT-2 ties it), but
# Hugging Face stores one as `lm_head.weight` when `tie_word_embeddings` is
# false. Stored `(vocab, hidden)` like `wte`.
LM_HEAD = "lm_head"

# Canonical name -> Keras weight path(s) in a `GPTBackbone`. A fused OpenAI
# tensor (c_attn) fills several Keras variables: it is split into equal parts
# along its last axis, in the order listed.
_BLOCK_KERAS = {
    "ln_1/g": ("attention_norm/scale",),
    "ln_1/b": ("attention_norm/shift",),
    "attn/c_attn/w": (
        "attention/query/kernel",
        "attention/key/kernel",
        "attention/value/kernel",
    ),
    "attn/c_attn/b": (
        "attention/query/bias",
        "attention/key/bias",
        "attention/value/bias",
    ),
    "attn/c_proj/w": ("attention/output_dense/kernel",),
    "attn/c_proj/b": ("attention/output_dense/bias",),
    "ln_2/g": ("feed_forward_norm/scale",),
    "ln_2/b": ("feed_forward_norm/shift",),
    "mlp/c_fc/w": ("feed_forward/intermediate_dense/kernel",),
    "mlp/c_fc/b": ("feed_forward/intermediate_dense/bias",),
    "mlp/c_proj/w": ("feed_forward/output_dense/kernel",),
    "mlp/c_proj/b": ("feed_forward/output_dense/bias",),
}
_GLOBAL_KERAS = {
    "wte": ("token_embedding/embeddings",),
    "wpe": ("position_embedding/embeddings",),
    "ln_f/g": ("layer_norm/scale",),
    "ln_f/b": ("layer_norm/shift",),
    LM_HEAD: ("token_embedding/reverse_embeddings",),
}

_HF_SUFFIX = {"g": "weight", "b": "bias", "w": "weight"}
HF_PREFIX = "transformer."
# Hugging Face checkpoints may carry the causal-mask buffers of old
# `transformers` versions; they are constants, not weights.
HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def canonical_names(n_layer: int, tied: bool = True) -> list[str]:
    """Every canonical tensor name of a GPT-2 with `n_layer` blocks, in order."""
    names = ["wte", "wpe"]
    for i in range(n_layer):
        names.extend(f"h{i}/{param}" for param in BLOCK_PARAMS)
    names.extend(["ln_f/g", "ln_f/b"])
    if not tied:
        names.append(LM_HEAD)
    return names


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, for a `GPT2Config`."""
    c, inner = config.n_embd, config.intermediate_dim
    per_block = {
        "ln_1/g": (c,),
        "ln_1/b": (c,),
        "attn/c_attn/w": (c, 3 * c),
        "attn/c_attn/b": (3 * c,),
        "attn/c_proj/w": (c, c),
        "attn/c_proj/b": (c,),
        "ln_2/g": (c,),
        "ln_2/b": (c,),
        "mlp/c_fc/w": (c, inner),
        "mlp/c_fc/b": (inner,),
        "mlp/c_proj/w": (inner, c),
        "mlp/c_proj/b": (c,),
    }
    shapes = {
        "wte": (config.vocab_size, c),
        "wpe": (config.n_positions, c),
        "ln_f/g": (c,),
        "ln_f/b": (c,),
    }
    for i in range(config.n_layer):
        shapes.update({f"h{i}/{k}": v for k, v in per_block.items()})
    if not config.tie_word_embeddings:
        shapes[LM_HEAD] = (config.vocab_size, c)
    return shapes


def openai_name(canonical: str) -> str:
    """`h0/ln_1/g` -> `model/h0/ln_1/g` (OpenAI's TF variable name)."""
    if canonical == LM_HEAD:
        raise ValueError("OpenAI's checkpoints have no separate lm_head (tied).")
    return f"model/{canonical}"


def from_openai_name(name: str) -> str | None:
    """`model/h0/ln_1/g` -> `h0/ln_1/g`; `None` for names outside `model/`."""
    return name[len("model/") :] if name.startswith("model/") else None


def hf_name(canonical: str, prefix: str = "") -> str:
    """`h0/attn/c_attn/w` -> `h.0.attn.c_attn.weight` (with `prefix` before it).

    `lm_head` is never prefixed: it sits beside `transformer.` in
    `GPT2LMHeadModel`.
    """
    if canonical == LM_HEAD:
        return "lm_head.weight"
    if canonical in ("wte", "wpe"):
        return f"{prefix}{canonical}.weight"
    parts = canonical.split("/")
    *modules, leaf = parts
    if modules[0].startswith("h") and modules[0][1:].isdigit():
        modules = ["h", modules[0][1:], *modules[1:]]
    return prefix + ".".join([*modules, _HF_SUFFIX[leaf]])


def from_hf_name(name: str) -> str | None:
    """`[transformer.]h.0.ln_1.weight` -> `h0/ln_1/g`; `None` if not GPT-2's.

    Weights and biases map back by module: LayerNorm `weight` is `g`, any
    other `weight` is `w`.
    """
    if name == "lm_head.weight":
        return LM_HEAD
    if name.startswith(HF_PREFIX):
        name = name[len(HF_PREFIX) :]
    if name in ("wte.weight", "wpe.weight"):
        return name.split(".")[0]
    parts = name.split(".")
    if len(parts) < 2 or parts[-1] not in ("weight", "bias"):
        return None
    leaf = parts[-1]
    modules = parts[:-1]
    if modules[0] == "h":
        if len(modules) < 2 or not modules[1].isdigit():
            return None
        modules = [f"h{modules[1]}", *modules[2:]]
    is_norm = modules[-1].startswith("ln_")
    short = "b" if leaf == "bias" else ("g" if is_norm else "w")
    canonical = "/".join([*modules, short])
    if canonical in GLOBAL_PARAMS:
        return canonical
    block, _, rest = canonical.partition("/")
    if block.startswith("h") and block[1:].isdigit() and rest in BLOCK_PARAMS:
        return canonical
    return None


def is_hf_buffer(name: str) -> bool:
    """True for the attention-mask buffers old `transformers` saved."""
    return name.endswith(HF_BUFFER_SUFFIXES)


def keras_paths(canonical: str) -> tuple[str, ...]:
    """The Keras weight path(s) in `GPTBackbone` that a canonical tensor fills."""
    if canonical in _GLOBAL_KERAS:
        return _GLOBAL_KERAS[canonical]
    block, _, rest = canonical.partition("/")
    return tuple(f"transformer_layer_{block[1:]}/{path}" for path in _BLOCK_KERAS[rest])


def resolve_keras_path(backbone: Any, path: str) -> Any:
    """`transformer_layer_0/attention/query/kernel` -> that variable.

    Walks layer attributes from `backbone.get_layer(first)`, so it does not
    depend on how Keras prefixes variable paths.
    """
    first, *attrs = path.split("/")
    obj = backbone.get_layer(first)
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def keras_targets(backbone: Any, n_layer: int, tied: bool) -> dict[str, list[Any]]:
    """Canonical name -> the `GPTBackbone` variables it fills, in split order."""
    return {
        name: [resolve_keras_path(backbone, p) for p in keras_paths(name)]
        for name in canonical_names(n_layer, tied)
    }
