"""Latency and speed of `keras_gpt_scratch.generation.stream`, token by token.

Builds a `GPTCausalLM` of the built-in `gpt2_124m` geometry with fresh weights
(optionally int8), then runs several streams in this one process, greedy and
without stop tokens, with random prompt ids. For each stream it prints when
the first token came, the wait for the second (the first stream's XLA
compilation, and in float32 the kernels' transposes), the total time, and
the median rate from the third token on. By default the second stream
repeats the first (warm) and the third has another length, as a chat's next
turn would.

    python tools/stream_bench.py
    python tools/stream_bench.py --int8 --streams 32+64 32+64 40+64 100+100
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8", action="store_true", help="quantize first")
    parser.add_argument(
        "--streams",
        nargs="+",
        default=["32+64", "32+64", "40+64", "32+64"],
        help="PROMPT+NEW token counts, one per stream, run in this order",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # keras_gpt_scratch first: it picks the backend before Keras loads.
    import keras_gpt_scratch as kgs  # noqa: I001
    import keras
    import numpy as np
    from keras_gpt_scratch.generation import stream

    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    # The built-in preset's geometry, with fresh weights (nothing to fetch).
    lm = kgs.GPTCausalLM.from_preset("gpt2_124m", load_weights=False, preprocessor=None)
    if args.int8:
        lm.quantize("int8")
    print(f"model built in {time.perf_counter() - start:.1f} s", flush=True)
    rng = np.random.default_rng(args.seed)
    for spec in args.streams:
        prompt_len, new = (int(n) for n in spec.split("+"))
        prompt = rng.integers(0, 50000, prompt_len).tolist()
        start = time.perf_counter()
        stamps = [start]
        for _ in stream(lm, prompt, new, stop_token_ids=None):
            stamps.append(time.perf_counter())
        steps = np.diff(stamps[2:])
        rate = 1 / statistics.median(steps) if len(steps) else float("nan")
        print(
            f"{spec}: first token {stamps[1] - start:.2f} s, second after "
            f"{stamps[2] - stamps[1]:.2f} s, total {stamps[-1] - start:.2f} s, "
            f"{rate:.1f} new tokens/s from the third on",
            flush=True,
        )


if __name__ == "__main__":
    main()
