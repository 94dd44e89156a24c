#!/usr/bin/env python
"""Check our GPT-2 against the reference implementation on real weights.

Usage:

    python tools/verify_gpt2.py CHECKPOINT [--prompts TEXT ...] [--tokens 32]
        [--atol 1e-3] [--no-keras-hub]

CHECKPOINT is OpenAI's original TF checkpoint folder (as the book's
`gpt_download.py` fetches it), a Hugging Face GPT-2 folder, or a Hub handle
such as `hf://openai-community/gpt2`.

What it does, in float32:

1. Converts the checkpoint with `keras_gpt_scratch.weights` into a
   `GPTCausalLM` (ours).
2. Builds the reference, `transformers.GPT2LMHeadModel`, from the same
   files. For an OpenAI TF checkpoint the tensors are first written as a
   Hugging Face folder in a temporary directory: `transformers` no longer
   reads TF checkpoints (version 5 removed `load_tf_weights_in_gpt2`, which
   also needed TensorFlow inside PyTorch). That step only renames tensors
   (`model/h0/attn/c_attn/w` -> `transformer.h.0.attn.c_attn.weight`) and
   drops OpenAI's leading 1; no value changes, so the reference computes
   with the checkpoint's own numbers.
3. Also loads keras_hub's `GPT2Backbone` from that folder, where it can
   (it cannot, e.g., for untied heads), as a second opinion.
4. For each prompt, reports the largest absolute difference of the final
   hidden states (after `ln_f`) and of the logits, then generates `--tokens`
   greedy tokens with ours (`generate()`, key/value cache) and with the
   reference (transformers' `generate()`, greedy, not stopping at
   `<|endoftext|>`) and compares them.

Exit status: 0 when every prompt's logits are within `--atol` of the
reference (default 1e-3, right for float32 GPT-2 124M) and the greedy tokens
are identical; 1 when not (or when any output is NaN/inf); 2 when the
checkpoint cannot be read or the arguments are wrong. keras_hub's numbers
are reported but do not decide the status.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PROMPTS = (
    "Every effort moves you",
    "Hello, I'm a language model,",
    "The quick brown fox jumps over the lazy dog. Then",
)
DEFAULT_TOKENS = 32
DEFAULT_ATOL = 1e-3


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    # NaN anywhere must fail the check, so it must survive the max.
    return float("nan") if np.isnan(diff).any() else float(diff.max())


def _reference_folder(checkpoint: Any, stack: contextlib.ExitStack) -> Path:
    """A Hugging Face folder with the checkpoint's tensors, for transformers."""
    from keras_gpt_scratch import weights

    if checkpoint.format == "transformers":
        return checkpoint.directory
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpt2-ref-")))
    tensors = {name: checkpoint.tensor(name) for name in checkpoint.names}
    weights.write_transformers_checkpoint(tensors, checkpoint.config, tmp)
    return tmp


def _load_reference(folder: Path):
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _load_keras_hub(folder: Path):
    import keras_hub

    return keras_hub.models.GPT2Backbone.from_preset(str(folder), dtype="float32")


def _reference_outputs(model, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    # transformers' last hidden state is taken after ln_f, like our backbone's.
    return out.hidden_states[-1][0].numpy(), out.logits[0].numpy()


def _reference_greedy(model, ids: list[int], tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=None,  # never stop early: compare all `tokens`
            pad_token_id=50256,
        )
    return [int(t) for t in out[0]]


def _inputs(ids: list[int]) -> dict[str, np.ndarray]:
    return {
        "token_ids": np.array([ids], "int32"),
        "padding_mask": np.ones((1, len(ids)), "int32"),
    }


def _our_greedy(lm, ids: list[int], tokens: int, total: int) -> list[int]:
    # Every prompt is padded to the same `total` length so that the compiled
    # generate function is built once, not once per prompt length.
    token_ids = np.zeros((1, total), "int32")
    token_ids[0, : len(ids)] = ids
    mask = np.zeros((1, total), "int32")
    mask[0, : len(ids)] = 1
    out = lm.generate(
        {"token_ids": token_ids, "padding_mask": mask}, stop_token_ids=None
    )
    return [int(t) for t in np.asarray(out["token_ids"])[0, : len(ids) + tokens]]


def verify(
    checkpoint: str,
    prompts: tuple[str, ...] | list[str] = DEFAULT_PROMPTS,
    tokens: int = DEFAULT_TOKENS,
    atol: float = DEFAULT_ATOL,
    keras_hub_check: bool = True,
    log=print,
) -> dict[str, Any]:
    """Compares ours with the reference on `checkpoint`; see the module doc.

    Args:
        checkpoint: a folder in either format, or an `hf://` handle.
        prompts: texts to run.
        tokens: greedy tokens to generate per prompt.
        atol: the largest logit difference that passes.
        keras_hub_check: also compare keras_hub's `GPT2Backbone`.
        log: where progress lines go.

    Returns:
        A report: `{"passed": bool, "prompts": [per-prompt dicts], ...}`.

    Raises:
        keras_gpt_scratch.weights.CheckpointError: the checkpoint is unreadable.
    """
    import keras_gpt_scratch
    from keras_gpt_scratch import weights
    from keras_gpt_scratch.tokenizers.gpt_tokenizer import GPTTokenizer

    tokenizer = GPTTokenizer()
    report: dict[str, Any] = {"checkpoint": checkpoint, "prompts": [], "atol": atol}
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(weights.read_gpt2_checkpoint(checkpoint))
        log(f"checkpoint: {ckpt!r}")
        config = ckpt.config
        lm = weights.from_gpt2_checkpoint(
            keras_gpt_scratch.GPTCausalLM, ckpt, preprocessor=None, dtype="float32"
        )
        lm.compile(sampler="greedy")
        folder = _reference_folder(ckpt, stack)
        reference = _load_reference(folder)
        hub = None
        if keras_hub_check:
            try:
                hub = _load_keras_hub(folder)
            except Exception as error:  # A second opinion only: report why not.
                report["keras_hub"] = f"skipped ({type(error).__name__}: {error})"
                log(f"keras_hub GPT2Backbone: {report['keras_hub']}")

        encoded = [[int(i) for i in tokenizer.encode(p)] for p in prompts]
        total = max(len(ids) for ids in encoded) + tokens
        for prompt, ids in zip(prompts, encoded, strict=True):
            if not ids:
                raise ValueError("Prompts must not be empty.")
            if len(ids) + tokens > config.n_positions:
                raise ValueError(
                    f"Prompt {prompt!r} ({len(ids)} tokens) plus {tokens} new "
                    f"tokens exceeds the context of {config.n_positions}."
                )
            if max(ids) >= config.vocab_size:
                raise ValueError(
                    f"Prompt {prompt!r} has token ids beyond the checkpoint's "
                    f"vocabulary of {config.vocab_size}."
                )
        total = min(total, config.n_positions)

        passed = True
        for prompt, ids in zip(prompts, encoded, strict=True):
            ref_hidden, ref_logits = _reference_outputs(reference, ids)
            x = _inputs(ids)
            hidden = np.asarray(lm.backbone(x))[0]
            logits = np.asarray(lm(x))[0]
            row: dict[str, Any] = {
                "prompt": prompt,
                "hidden_max_abs_diff": _max_abs_diff(hidden, ref_hidden),
                "logits_max_abs_diff": _max_abs_diff(logits, ref_logits),
                "finite": bool(
                    np.isfinite(logits).all() and np.isfinite(ref_logits).all()
                ),
            }
            if hub is not None:
                hub_hidden = np.asarray(hub(x))[0]
                hub_logits = np.asarray(hub.token_embedding(hub(x), reverse=True))[0]
                row["keras_hub_hidden_max_abs_diff"] = _max_abs_diff(
                    hub_hidden, ref_hidden
                )
                row["keras_hub_logits_max_abs_diff"] = _max_abs_diff(
                    hub_logits, ref_logits
                )
            ours = _our_greedy(lm, ids, tokens, total)
            theirs = _reference_greedy(reference, ids, tokens)
            new_ours, new_theirs = ours[len(ids) :], theirs[len(ids) :]
            agree = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(new_ours, new_theirs, strict=True))
                    if a != b
                ),
                len(new_theirs),
            )
            row["greedy_agree"] = agree
            row["greedy_tokens"] = tokens
            row["greedy_ours"] = new_ours
            row["greedy_reference"] = new_theirs
            row["passed"] = bool(
                row["finite"] and row["logits_max_abs_diff"] <= atol and agree == tokens
            )
            passed &= row["passed"]
            report["prompts"].append(row)
            _log_row(row, atol, log, tokenizer)
    report["passed"] = passed
    log(f"RESULT: {'PASS' if passed else 'FAIL'}")
    return report


def _log_row(row: dict[str, Any], atol: float, log, tokenizer) -> None:
    log(f"prompt {row['prompt']!r}")
    extra = ""
    if "keras_hub_hidden_max_abs_diff" in row:
        extra = (
            f"   keras_hub vs transformers {row['keras_hub_hidden_max_abs_diff']:.3g}"
        )
    log(
        f"  hidden states max|diff| vs transformers {row['hidden_max_abs_diff']:.3g}{extra}"
    )
    extra = ""
    if "keras_hub_logits_max_abs_diff" in row:
        extra = (
            f"   keras_hub vs transformers {row['keras_hub_logits_max_abs_diff']:.3g}"
        )
    ok = "ok" if row["finite"] and row["logits_max_abs_diff"] <= atol else "TOO LARGE"
    log(
        f"  logits        max|diff| vs transformers {row['logits_max_abs_diff']:.3g} "
        f"(atol {atol:g}) {ok}{extra}"
    )
    n, total = row["greedy_agree"], row["greedy_tokens"]
    log(f"  greedy        {n}/{total} tokens agree{'' if n == total else ' DIFFER'}")
    log(f"    ours: {tokenizer.decode(row['greedy_ours'])!r}")
    if n != total:
        log(f"    ref:  {tokenizer.decode(row['greedy_reference'])!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare keras_gpt_scratch's GPT-2 with transformers' on a "
        "checkpoint (OpenAI TF folder, Hugging Face folder, or hf://owner/name)."
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    parser.add_argument(
        "--no-keras-hub", action="store_true", help="skip keras_hub's GPT2Backbone"
    )
    args = parser.parse_args(argv)
    if args.tokens < 1:
        parser.error("--tokens must be at least 1")

    from keras_gpt_scratch.weights import CheckpointError

    try:
        report = verify(
            args.checkpoint,
            args.prompts,
            args.tokens,
            args.atol,
            keras_hub_check=not args.no_keras_hub,
        )
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
