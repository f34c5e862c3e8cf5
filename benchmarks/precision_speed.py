"""`train.precision: auto`: is bfloat16 mixed precision faster than float32 on this CPU? Times
training steps of both, alternating, for the quick sweep's model and the real-photo one
(the same measurement as training_step.py), and says what `auto` resolves to here. Where the
first round finds one side 3x slower (bfloat16 emulated on a CPU without its units), more
rounds cannot change the verdict and are not run.

    python benchmarks/precision_speed.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (quiet TensorFlow before it loads)
from common import alternate, table, write_block
from training_step import training_step

from petloc.training.fit import resolved_precision

SETUPS = [  # (what, backbone, box head, second stage, size)
    ("quick.yaml's simple at 64 px (the file: 48 px since stop 14)", "simple", "dense", "none", 64),
    (
        "cats_dogs.yaml's simple_context + head crop, 128 px",
        "simple_context",
        "centre",
        "head_crop",
        128,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for what, backbone, box_head, second_stage, size in SETUPS:
        settings = argparse.Namespace(
            backbone=backbone, box_head=box_head, second_stage=second_stage, size=size, batch=16
        )
        steps = {name: training_step(name, settings) for name in ("float32", "mixed_bfloat16")}
        runs = {name: (lambda s=s: s(args.steps)) for name, s in steps.items()}
        best = alternate(runs, 1)
        if 1 / 3 < best["mixed_bfloat16"] / best["float32"] < 3:
            more = alternate(runs, args.rounds - 1)
            best = {name: min(best[name], more[name]) for name in best}
        ratio = best["mixed_bfloat16"] / best["float32"]
        rows.append(
            [
                f"training step, mixed_bfloat16 / float32 ({what}, batch 16)",
                f"{best['mixed_bfloat16'] / args.steps * 1000:.0f} / {best['float32'] / args.steps * 1000:.0f} ms",
                f"**{ratio:.2f}x**",
                "faster" if ratio < 1 else "slower",
            ]
        )
    body = table(["what (A / B)", "A / B", "ratio", "verdict"], rows) + (
        "\n\n`train.precision: auto` resolves on this machine to "
        f"**{resolved_precision('auto', 64)}** at 64 px and "
        f"**{resolved_precision('auto', 128)}** at 128 px (mixed_bfloat16 where /proc/cpuinfo "
        "lists avx512_bf16 or amx_bf16 and images are 128 px or more, float32 elsewhere: an "
        "earlier session's CPU without bf16 units took 14x as long per step in bfloat16)."
    )
    write_block("precision", "Precision: `python benchmarks/precision_speed.py`", body)


if __name__ == "__main__":
    main()
