"""`keras-gpt`: train, evaluate and sample GPT models from the command line."""

from __future__ import annotations

import argparse
import json
import sys


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except `None`: those flags' help says what unset means."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a GPT with model.fit (default: gpt_tiny on Tiny Shakespeare)",
        formatter_class=_HelpFormatter,
    )
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--preset", default="gpt_tiny", help="architecture preset, trained from scratch"
    )
    model.add_argument(
        "--config",
        help="JSON file with GPTBackbone arguments or the book's GPT_CONFIG keys",
    )
    model.add_argument(
        "--from",
        dest="init_from",
        help="fine-tune from this preset (built-in name, preset directory or hf://...)",
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument(
        "--corpus", default="tinyshakespeare", help="tinyshakespeare or verdict"
    )
    data.add_argument("--text-files", nargs="+", help="your own UTF-8 text files")
    p.add_argument(
        "--context-length", type=int, help="window length (default: the model's)"
    )
    p.add_argument(
        "--stride", type=int, help="distance between windows (default: context length)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument(
        "--steps", type=int, help="total training steps (overrides --epochs)"
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        help="peak learning rate (default: 2e-3; 5e-5 with --task classify)",
    )
    p.add_argument(
        "--min-learning-rate", type=float, default=2e-4, help="end of the cosine decay"
    )
    p.add_argument(
        "--warmup-steps", type=int, help="linear warmup (default: 5%% of the steps)"
    )
    p.add_argument(
        "--lr-schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="warmup + cosine decay, or the book's constant rate",
    )
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument(
        "--adam-epsilon",
        type=float,
        default=1e-8,
        help="AdamW epsilon (PyTorch's and the book's 1e-8; Keras' default is 1e-7)",
    )
    p.add_argument(
        "--clipnorm", type=float, default=1.0, help="global gradient-norm clip (0: off)"
    )
    p.add_argument("--dropout", type=float, help="override the model's dropout")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument(
        "--output-dir",
        help="default: runs/gpt_tiny; runs/classifier with --task classify",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a run in --output-dir"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue a finished run's directory"
    )
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--sample-prompt", help="prompt for the per-epoch text sample")
    p.add_argument("--sample-tokens", type=int, default=40)
    p.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multi-worker", "tpu"),
        default="default",
        help="tf.distribute strategy; multi-worker reads TF_CONFIG",
    )
    p.add_argument(
        "--collective-timeout",
        type=float,
        default=300.0,
        help="seconds a multi-worker step waits for a silent peer before failing",
    )
    p.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        help="apply averaged gradients every N steps (effective batch N x batch)",
    )
    p.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="XLA for the train step (auto: Keras' choice, off on CPU)",
    )
    p.add_argument(
        "--dtype-policy",
        choices=("float32", "mixed_bfloat16", "mixed_float16"),
        help="Keras mixed precision (weights stay float32); mixed_bfloat16 is "
        "fastest on GPUs and CPUs with AVX512-BF16/AMX (default: Keras' global "
        "policy, float32)",
    )
    # === Fine-tuning: LoRA and classification ===
    p.add_argument(
        "--lora-rank",
        type=int,
        help="train only LoRA adapters of this rank on query/value (use with "
        "--from); saved as adapter.lora.h5 in --output-dir",
    )
    p.add_argument(
        "--task",
        choices=("lm", "classify"),
        default="lm",
        help="lm: language modeling on a corpus; classify: a GPTClassifier on --csv",
    )
    p.add_argument("--csv", help="classify: CSV file with a header row")
    p.add_argument("--text-column", default="text", help="classify: text column")
    p.add_argument(
        "--label-column", default="label", help="classify: integer label column"
    )
    p.add_argument(
        "--num-classes", type=int, help="classify: default largest label + 1"
    )
    p.add_argument(
        "--train-last-block-only",
        action="store_true",
        help="classify: train only the last block, final LayerNorm and head",
    )


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="loss, perplexity and nats/char of a preset on a corpus split",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--preset", required=True, help="built-in name, preset directory or hf://..."
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument("--corpus", default="tinyshakespeare")
    data.add_argument("--text-files", nargs="+")
    p.add_argument(
        "--split", default="validation", help="train, validation, test or all"
    )
    p.add_argument("--context-length", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a preset, streamed as tokens arrive",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--preset", required=True, help="built-in name, preset directory or hf://..."
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="0 = no top-k filter")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass, e.g. 0.9")
    p.add_argument("--seed", type=int, help="seed for reproducible samples")


def run_generate(args, out=sys.stdout) -> None:
    """Stream a sample to `out`, holding back bytes of a split character."""
    import warnings

    from keras_gpt_scratch.generation import stream
    from keras_gpt_scratch.models.gpt_causal_lm import GPTCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "freshly initialised" is shown below
        lm = GPTCausalLM.from_preset(args.preset)
    tokenizer = lm.preprocessor.tokenizer
    if lm.backbone.vocabulary_size != tokenizer.vocabulary_size():
        raise ValueError("The preset's tokenizer does not match its model.")
    out.write(args.prompt)
    out.flush()
    generated, shown = [], ""
    for token in stream(
        lm,
        tokenizer.encode(args.prompt),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
    ):
        generated.append(token)
        text = tokenizer.decode(generated)
        if text.endswith("\ufffd"):
            continue  # a multi-byte character continues in the next token
        out.write(text[len(shown) :])
        out.flush()
        shown = text
    out.write("\n")


def _push_parser(sub) -> None:
    p = sub.add_parser(
        "push",
        help="upload a preset directory to the Hugging Face Hub, with a model card",
        description="Upload a preset directory to the Hugging Face Hub, with a model card.",
    )
    p.add_argument("preset", help="preset directory, e.g. runs/gpt_tiny/best")
    p.add_argument("repo_id", help="Hub repo: namespace/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (created if missing)")
    p.add_argument("-m", "--message", dest="commit_message", help="commit message")
    p.add_argument(
        "--token",
        help="Hub token with write access (default: HF_TOKEN, then `hf auth "
        "login`; prefer those, a flag lands in your shell history)",
    )


def _pull_parser(sub) -> None:
    p = sub.add_parser(
        "pull",
        help="download a preset from the Hugging Face Hub; prints its local path",
        description="Download a preset from the Hugging Face Hub; prints its local path.",
    )
    p.add_argument("repo_id", help="Hub repo: namespace/name or hf://namespace/name")
    p.add_argument("--revision", help="branch, tag or commit sha (default: main)")
    p.add_argument(
        "--local-dir",
        help="also copy the preset to this folder (default: only the HF cache)",
    )
    p.add_argument(
        "--token", help="Hub token for private repos (default: HF_TOKEN, then login)"
    )


def _jit(value: str):
    return {"auto": "auto", "true": True, "false": False}[value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-gpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    _generate_parser(sub)
    _push_parser(sub)
    _pull_parser(sub)
    args = parser.parse_args(argv)

    # Imported here so that `keras-gpt --help` is instant and so that the
    # package picks the backend and oneDNN before TensorFlow loads.
    from keras_gpt_scratch import training

    try:
        if args.command == "train":
            model_config = None
            if args.config:
                with open(args.config, encoding="utf-8") as f:
                    model_config = json.load(f)
            if args.task == "classify":
                from keras_gpt_scratch import classify

                classify.train_classifier(classify.config_from_args(args, model_config))
                return 0
            if args.csv or args.train_last_block_only or args.num_classes:
                raise ValueError(
                    "--csv, --num-classes and --train-last-block-only need "
                    "--task classify."
                )
            config = training.TrainConfig(
                preset=args.preset,
                init_from=args.init_from,
                model_config=model_config,
                corpus=args.corpus,
                text_files=args.text_files,
                context_length=args.context_length,
                stride=args.stride,
                batch_size=args.batch_size,
                epochs=args.epochs,
                steps=args.steps,
                learning_rate=(
                    2e-3 if args.learning_rate is None else args.learning_rate
                ),
                min_learning_rate=args.min_learning_rate,
                warmup_steps=args.warmup_steps,
                lr_schedule=args.lr_schedule,
                weight_decay=args.weight_decay,
                adam_epsilon=args.adam_epsilon,
                clipnorm=args.clipnorm,
                dropout=args.dropout,
                seed=args.seed,
                output_dir=args.output_dir or "runs/gpt_tiny",
                resume=args.resume,
                overwrite=args.overwrite,
                tensorboard=args.tensorboard,
                sample_prompt=args.sample_prompt,
                sample_tokens=args.sample_tokens,
                jit_compile=_jit(args.jit_compile),
                strategy=args.strategy,
                gradient_accumulation_steps=args.gradient_accumulation_steps,
                collective_timeout=args.collective_timeout,
                lora_rank=args.lora_rank,
                dtype_policy=args.dtype_policy,
            )
            training.train(config)
        elif args.command == "evaluate":
            result = training.evaluate(
                args.preset,
                corpus=args.corpus,
                split=args.split,
                text_files=args.text_files,
                context_length=args.context_length,
                batch_size=args.batch_size,
            )
            if args.json:
                import dataclasses

                print(json.dumps(dataclasses.asdict(result)))
            else:
                print(result.summary_line())
        elif args.command == "generate":
            run_generate(args)
        elif args.command in ("push", "pull"):
            from keras_gpt_scratch import hub

            return hub.run_cli(args)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        print(f"keras-gpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
