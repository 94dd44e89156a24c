"""Trainable parameters and adapter file size of a LoRA fine-tune.

Builds a `GPTBackbone` with random weights (default: the gpt2_124m
geometry), enables LoRA at each rank, counts the trainable parameters, saves
the adapters with `save_lora_weights` and reports the file's size. A fresh
backbone is built per rank and per target set (LoRA can be enabled once).

    python tools/lora_footprint.py
    python tools/lora_footprint.py --ranks 8 4 --targets query value
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 4])
    p.add_argument("--targets", nargs="+", help="default: query and value")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    args = p.parse_args(argv)

    import numpy as np

    import keras_gpt_scratch as kgs

    def count(variables):
        return int(sum(np.prod(v.shape) for v in variables))

    print(
        f"{'rank':>4} {'trainable':>10} {'of total':>12} {'share':>7} "
        f"{'file bytes':>11} {'file':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for rank in args.ranks:
            backbone = kgs.GPTBackbone(
                vocabulary_size=50257,
                num_layers=args.layers,
                num_heads=args.heads,
                hidden_dim=args.hidden,
            )
            total = count(backbone.weights)
            backbone.enable_lora(rank, target_layer_names=args.targets)
            trainable = count(backbone.trainable_weights)
            path = os.path.join(tmp, f"r{rank}.lora.h5")
            backbone.save_lora_weights(path)
            size = os.path.getsize(path)
            print(
                f"{rank:>4} {trainable:>10,} {total:>12,} "
                f"{trainable / total:>7.3%} {size:>11,} {size / 1024:>6.0f} KiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
