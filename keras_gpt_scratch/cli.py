"""`keras-gpt`: train, evaluate and sample GPT models from the command line."""

from __future__ import annotations

import argparse
import json
import sys


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a GPT with model.fit (default: gpt_tiny on Tiny Shakespeare)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--learning-rate", type=float, default=2e-3, help="peak learning rate"
    )
    p.add_argument(
        "--min-learning-rate", type=float, default=2e-4, help="end of the cosine decay"
    )
    p.add_argument(
        "--warmup-steps", type=int, help="linear warmup (default: 5%% of the steps)"
    )
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument(
        "--clipnorm", type=float, default=1.0, help="global gradient-norm clip"
    )
    p.add_argument("--dropout", type=float, help="override the model's dropout")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--output-dir", default="runs/gpt_tiny")
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
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="XLA for the train step (auto: Keras' choice, off on CPU)",
    )


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="loss, perplexity and nats/char of a preset on a corpus split",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", required=True, help="built-in name, preset directory or hf://...")
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


def _jit(value: str):
    return {"auto": "auto", "true": True, "false": False}[value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-gpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    _generate_parser(sub)
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
                learning_rate=args.learning_rate,
                min_learning_rate=args.min_learning_rate,
                warmup_steps=args.warmup_steps,
                weight_decay=args.weight_decay,
                clipnorm=args.clipnorm,
                dropout=args.dropout,
                seed=args.seed,
                output_dir=args.output_dir,
                resume=args.resume,
                overwrite=args.overwrite,
                tensorboard=args.tensorboard,
                sample_prompt=args.sample_prompt,
                sample_tokens=args.sample_tokens,
                jit_compile=_jit(args.jit_compile),
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
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"keras-gpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
