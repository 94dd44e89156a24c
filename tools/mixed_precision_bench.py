"""Training speed and peak memory of float32 vs mixed precision, on this machine.

Each dtype policy runs in its own fresh worker process, so that peak memory
(`ru_maxrss`) is per policy and the global policy never leaks between runs.
Every worker builds a `GPTCausalLM` with random weights (default: the
gpt_tiny geometry: vocabulary 50257, 4 layers, 4 heads, 256 wide), compiles
it with AdamW (wrapped in a `LossScaleOptimizer` for mixed_float16, by
Keras' compile) and its default loss ("auto": the fused head + loss where it
applies), runs `--warmup` fit steps (tracing), then times `--steps` more on
a fixed batch of random token ids, one by one, and reports tokens/s from the
median step, the seconds per step, peak RSS and whether the loss stayed
finite and fell. Steps are timed one by one because `fit()` can take seconds
to return after its last step (tf.data's autotuning thread), which is not
training: whole `fit` calls once timed three different policies at the same
3.41 s per step.

    python tools/mixed_precision_bench.py
    python tools/mixed_precision_bench.py --policies float32 mixed_bfloat16 \
        --batch-size 16 --context 256 --steps 6 --rounds 2 --json mp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

RESULT_TAG = "MP_RESULT "
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def worker(args) -> dict:
    # keras_gpt_scratch first: it picks the backend before Keras loads.
    import resource  # noqa: I001

    import numpy as np

    import keras_gpt_scratch as kgs  # selects the TF backend and oneDNN
    from bench import fit_step_times  # tools/ is this worker script's path[0]
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(args.policy)
    keras.utils.set_random_seed(0)
    backbone = kgs.GPTBackbone(
        vocabulary_size=args.vocab,
        num_layers=args.layers,
        num_heads=args.heads,
        hidden_dim=args.hidden,
        max_sequence_length=args.context,
        dropout=0.0,
    )
    lm = kgs.GPTCausalLM(backbone, preprocessor=None)
    lm.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss="auto",
        weighted_metrics=[],
    )
    ids = np.random.default_rng(0).integers(
        0, args.vocab, (args.batch_size, args.context + 1)
    )
    ids = ids.astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    ds = tf.data.Dataset.from_tensors((x, ids[:, 1:])).repeat().prefetch(2)
    warm = lm.fit(ds, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    times, timed = fit_step_times(lm, ds, args.steps)
    step = statistics.median(times)
    first, last = warm.history["loss"][0], timed.history["loss"][-1]
    return {
        "policy": args.policy,
        "tokens_per_s": args.batch_size * args.context / step,
        "seconds_per_step": step,
        "step_seconds": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_first": float(first),
        "loss_last": float(last),
        "finite": bool(np.isfinite([first, last]).all()),
        "optimizer": type(lm.optimizer).__name__,
        "compute_dtype": backbone.compute_dtype,
        "variable_dtypes": sorted({w.dtype for w in lm.weights}),
    }


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat, alternating the policy order"
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", dest="policy", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.policy:
        print(RESULT_TAG + json.dumps(worker(args)), flush=True)
        return 0
    passthrough = [
        f"--{k}={getattr(args, k.replace('-', '_'))}"
        for k in ("vocab", "layers", "heads", "hidden", "context", "batch-size")
    ] + [f"--warmup={args.warmup}", f"--steps={args.steps}"]
    results: dict[str, list[dict]] = {p: [] for p in args.policies}
    for r in range(args.rounds):
        # Alternate the order so that a drifting machine hits all policies.
        order = args.policies if r % 2 == 0 else list(reversed(args.policies))
        for policy in order:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", policy, *passthrough],
                capture_output=True,
                text=True,
            )
            lines = [
                line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)
            ]
            if proc.returncode or not lines:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"worker {policy} failed ({proc.returncode})")
            result = json.loads(lines[-1][len(RESULT_TAG) :])
            results[policy].append(result)
            print(json.dumps(result), flush=True)
    base = statistics.median(r["tokens_per_s"] for r in results[args.policies[0]])
    print(
        f"\n{'policy':16} {'tokens/s':>9} {'s/step':>7} {'vs ' + args.policies[0]:>12}"
        f" {'peak RSS MB':>12} {'loss first->last':>18}"
    )
    for policy, runs in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        step = statistics.median(r["seconds_per_step"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        loss = f"{runs[-1]['loss_first']:.2f}->{runs[-1]['loss_last']:.2f}"
        print(
            f"{policy:16} {tps:9.0f} {step:7.2f} "
            f"{tps / base:11.2f}x {rss:12.0f} {loss:>18}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
