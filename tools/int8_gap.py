"""How far int8 weights move GPT-2 124M's logits from float32.

    python tools/int8_gap.py [--seed 0]

Builds the 124M geometry with random GPT-2-style weights, copies it, calls
`quantize("int8")` on the copy, and compares the logits of both on random
prompts: the largest absolute difference (also relative to the largest
logit), the mean absolute difference, and how often the argmax agrees;
first over whole sequences, then one position per call (a batch-1 decoding
step, where int8 `Linear` layers skip quantizing the activations).
"""

import argparse

import numpy as np

import keras_gpt_scratch as kgs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(args.seed)
    config = dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768)
    f32 = kgs.GPTCausalLM(kgs.GPTBackbone(**config), preprocessor=None)
    q = kgs.GPTCausalLM(kgs.GPTBackbone(**config), preprocessor=None)
    q.set_weights(f32.get_weights())
    q.quantize("int8")
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, 50257, (args.batch, args.length)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    report(f"{args.batch}x{args.length} positions", f32(x), q(x))
    # One position at a time, as a batch-1 decoding step runs: int8 `Linear`
    # then multiplies by the dequantized weights instead of quantizing the
    # activations too.
    a, b = [], []
    for row in ids[:, : args.length // 4].reshape(-1, 1):
        one = {"token_ids": row[None], "padding_mask": np.ones((1, 1), "int32")}
        a.append(np.asarray(f32(one)))
        b.append(np.asarray(q(one)))
    report(f"{len(a)} single positions", np.concatenate(a), np.concatenate(b))


def report(what, a, b) -> None:
    a, b = np.asarray(a), np.asarray(b)
    diff = np.abs(a - b)
    print(
        f"int8 vs float32 logits over {what}: "
        f"max |diff| {diff.max():.4f} ({diff.max() / np.abs(a).max():.2%} of the "
        f"largest logit), mean |diff| {diff.mean():.5f}, argmax agreement "
        f"{(a.argmax(-1) == b.argmax(-1)).mean():.1%}"
    )


if __name__ == "__main__":
    main()
