"""Text generation beyond `GPTCausalLM.generate`: the book's loop and streaming.

- `generate` is the book's chapter-5 `generate(model, idx, max_new_tokens,
  context_size, temperature, top_k, eos_id)`: one full forward pass per new
  token over the last `context_size` tokens, so the window slides past the
  model's context length.
- `generate_text` is the same, string in and string out.
- `stream` yields tokens one by one from the key/value cache, for printing
  text as it arrives (`keras-gpt generate`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from keras import ops

from keras_gpt_scratch.weights.config import END_OF_TEXT_ID


def _filter_logits(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> np.ndarray | None:
    """Probabilities after temperature, top-k and top-p; None means greedy."""
    if top_k is not None and top_k > 0:
        kth = np.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = np.where(logits < kth, -np.inf, logits)
    if not temperature or temperature <= 0:
        return None
    logits = logits / temperature
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, -1)
        # Keep the smallest prefix whose mass reaches top_p (at least one).
        keep_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    return probs


def _pick(probs, logits, rng) -> np.ndarray:
    if probs is None:
        return np.argmax(logits, axis=-1)
    return np.array([rng.choice(len(p), p=p) for p in probs])


def _check_sampling(temperature, top_k, top_p):
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}.")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be a positive number of tokens; got {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}.")


def generate(
    model,
    idx,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """The book's `generate`: sample `max_new_tokens` ids after `idx`.

    Args:
        model: a `GPTCausalLM` (or any callable mapping `{"token_ids",
            "padding_mask"}` to logits).
        idx: int array `(batch, tokens)` of prompt ids.
        max_new_tokens: how many ids to add.
        context_size: the model sees only the last `context_size` ids, so
            generation can run past the model's context length.
        temperature: 0 picks the most likely id (greedy); higher values
            sample from a flatter distribution.
        top_k: sample only among the `top_k` most likely ids.
        eos_id: stop early once every row has produced this id.
        seed: seeds the sampling, for reproducible runs.
        top_p: nucleus sampling: the smallest set of ids with this much mass.

    Returns:
        int array `(batch, tokens + new)`.

    Example:
    ```python
    idx = np.array([tokenizer.encode("Every effort moves you")])
    out = generate(lm, idx, max_new_tokens=15, context_size=256,
                   temperature=1.4, top_k=25, seed=123)
    ```
    """
    _check_sampling(temperature, top_k, top_p)
    if context_size <= 0:
        raise ValueError(f"context_size must be positive; got {context_size}.")
    rng = np.random.default_rng(seed)
    idx = np.asarray(idx, dtype="int32")
    if idx.ndim == 1:
        idx = idx[None]
    done = np.zeros(len(idx), bool)
    for _ in range(max_new_tokens):
        window = idx[:, -context_size:]
        logits = model({"token_ids": window, "padding_mask": np.ones_like(window)})
        logits = np.asarray(ops.convert_to_numpy(logits)[:, -1, :], "float64")
        probs = _filter_logits(logits, temperature, top_k, top_p)
        nxt = _pick(probs, logits, rng).astype("int32")
        if eos_id is not None:
            nxt = np.where(done, eos_id, nxt)
        idx = np.concatenate([idx, nxt[:, None]], axis=1)
        if eos_id is not None:
            done |= nxt == eos_id
            if done.all():
                break
    return idx


def generate_text(
    lm,
    prompt: str,
    max_new_tokens: int = 50,
    context_size: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
) -> str:
    """`generate` with text in and out, through the model's tokenizer.

    `context_size` defaults to the model's context length; the window slides
    when prompt plus new tokens are longer.
    """
    tokenizer = lm.preprocessor.tokenizer
    idx = np.array([tokenizer.encode(prompt)], "int32")
    context = context_size or lm.backbone.max_sequence_length
    out = generate(
        lm, idx, max_new_tokens, context, temperature, top_k, eos_id, seed, top_p
    )
    return tokenizer.decode(out[0].tolist())


def stream(
    lm,
    prompt_ids,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_token_ids=(END_OF_TEXT_ID,),
) -> Iterator[int]:
    """Yield new token ids one at a time, decoding with the key/value cache.

    The prompt is processed in one pass; every later step feeds one token
    through a compiled function that reads and extends the cache (with XLA
    unless `lm.generate_jit_compile` is False). With float weights and XLA
    that step multiplies by the layers' kernels transposed, made once per call,
    as `GPTCausalLM.generate` does. The cache is rounded up to one of a few
    sizes (`cache_length`), so streams of different lengths share a
    compiled step: it is compiled once per model and cache size, in the
    first token's step.
    """
    _check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")
    prompt_ids = [int(i) for i in prompt_ids]
    limit = lm.backbone.max_sequence_length
    if not prompt_ids:
        raise ValueError("The prompt is empty; give at least one token.")
    if len(prompt_ids) >= limit:
        raise ValueError(
            f"The prompt has {len(prompt_ids)} tokens; the model's context "
            f"length is {limit}, so nothing can follow it. Shorten the prompt."
        )
    total = min(len(prompt_ids) + max_new_tokens, limit)
    cache = lm.empty_cache(1, cache_length(total, limit))
    prompt_step, step = _step_functions(lm)
    rng = np.random.default_rng(seed)
    logits, cache = prompt_step(
        tf.constant([prompt_ids], "int32"), cache, tf.constant(0)
    )
    kernels = None
    for position in range(len(prompt_ids), total):
        row = np.asarray(logits.numpy()[0], "float64")
        probs = _filter_logits(row[None], temperature, top_k, top_p)
        token = int(_pick(probs, row[None], rng)[0])
        yield token
        if (stop_token_ids and token in stop_token_ids) or position + 1 >= total:
            return
        if kernels is None:
            # After the first token, which then arrives without this delay
            # (made alongside the prompt's pass, they delayed it as much).
            kernels = lm._make_one_row_kernels()
        logits, cache = step(
            tf.constant([[token]], "int32"), cache, tf.constant(position), kernels
        )


def cache_length(total: int, limit: int) -> int:
    """The stream's cache size for `total` positions: a power of two from
    64 up to 256, then a multiple of 256, at most `limit`. XLA compiles the
    decoding step once per cache size, and each cached position costs a
    little every step (the cache is copied in and out of the compiled step),
    so sizes are few but not much larger than needed."""
    if total <= 256:
        size = max(64, 1 << (total - 1).bit_length())
    else:
        size = -(-total // 256) * 256
    return min(size, limit)


def _step_functions(lm):
    """`(prompt_step, token_step)`, made once per model and reused while
    its int8, LoRA and XLA settings stay the same."""
    key = lm._trace_key()
    fns = getattr(lm, "_stream_step", None)
    if fns is None or getattr(lm, "_stream_key", None) != key:

        def prompt_step(token_ids, cache, index):
            logits, _, cache = lm.call_with_cache(token_ids, cache, index)
            return logits[:, -1, :], cache

        def token_step(token_ids, cache, index, kernels):
            # `kernels`: see `GPTCausalLM._one_row_kernels`.
            with lm._one_row_kernels(kernels):
                return prompt_step(token_ids, cache, index)

        # Traced for the first call's shapes, and once more for any shape
        # (`reduce_retracing`): an input signature of unknown lengths from the
        # start made the first token about 0.8 s later for 124M. The one-token
        # step runs with XLA, as `generate` does (int8 weights are read as
        # int8 only there), compiled per cache size; the prompt's pass runs
        # once, not worth an XLA compilation of its own.
        options = dict(reduce_retracing=True, autograph=False)
        fns = (
            tf.function(prompt_step, **options),
            tf.function(token_step, jit_compile=lm.generate_jit_compile, **options),
        )
        lm._stream_step, lm._stream_key = fns, key
    return fns
