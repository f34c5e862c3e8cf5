"""What makes a training step faster on this CPU? Times training steps of the localiser
under each setting (float32, mixed_bfloat16, XLA) and batch size, alternating, in one run,
and prints each one's time per step and per photo, and its ratio per photo to float32 at the first batch size.

    python benchmarks/training_step.py [--backbone simple] [--box-head centre] [--size 128]
                                       [--second-stage none] [--batch 16 [32 ...]] [--steps 10]
                                       [--rounds 3] [--settings float32 xla]

Mixed precision only pays where the CPU has bf16 units (AVX512_BF16 or AMX); the script
prints which of those /proc/cpuinfo lists. Keras turns XLA off on CPUs unless asked.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from petloc.model import Hyperparameters, build_model, compile_model
from petloc.training.fit import dtype_policy

# setting -> (Keras dtype policy, jit_compile)
SETTINGS = {
    "float32": ("float32", False),
    "mixed_bfloat16": ("mixed_bfloat16", False),
    "xla": ("float32", True),
}


def cpu_bf16_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def training_step(setting: str, args):
    """A compiled model under `setting` and a function that times `n` training steps on one batch."""
    policy, jit = SETTINGS[setting]
    spec = Hyperparameters(
        backbone=args.backbone,
        width=0.5,
        head_units=128,
        box_loss="l1",
        box_loss_weight=5.0,
        box_head=args.box_head,
        second_stage=args.second_stage,
    )
    with dtype_policy(policy):
        model = compile_model(build_model(spec, args.size), spec, jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32)
    y = {
        "cls": rng.integers(0, 2, args.batch),
        "box": np.tile([[0.2, 0.2, 0.6, 0.7]], (args.batch, 1)).astype(np.float32),
    }

    def steps(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            model.train_on_batch(x, y)
        return (time.perf_counter() - start) / n

    steps(3)  # trace and warm up
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="simple")
    parser.add_argument("--box-head", default="centre")
    parser.add_argument("--second-stage", default="none", choices=["none", "head_crop"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[16],
        help="batch sizes to compare (the same photos per timing: steps x the first)",
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps per timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    if args.second_stage == "head_crop" and "xla" in args.settings:
        parser.error(
            "XLA cannot compile the head crop (tf.image.crop_and_resize): add --settings float32 mixed_bfloat16"
        )
    print(f"CPU bf16 flags: {', '.join(cpu_bf16_flags()) or 'none'}")
    photos = args.steps * args.batch[0]
    runners = {
        (setting, batch): training_step(
            setting, argparse.Namespace(**{**vars(args), "batch": batch})
        )
        for setting in dict.fromkeys(["float32", *args.settings])
        for batch in args.batch
    }
    times = {key: float("inf") for key in runners}
    # alternate, so a change in machine load hits all alike; keep the best
    for _ in range(args.rounds):
        for (setting, batch), steps in runners.items():
            times[setting, batch] = min(times[setting, batch], steps(max(1, photos // batch)))
    per_photo = {key: t / key[1] for key, t in times.items()}
    base = per_photo["float32", args.batch[0]]
    what = (
        f"{args.backbone}, {args.box_head} head, second stage {args.second_stage}, {args.size} px"
    )
    for (setting, batch), t in times.items():
        print(
            f"{setting:>15}, batch {batch:>3}: {t * 1000:7.1f} ms per training step, "
            f"{per_photo[setting, batch] * 1000:5.2f} ms per photo "
            f"({what}), {per_photo[setting, batch] / base:.2f}x float32 at batch {args.batch[0]} per photo"
        )


if __name__ == "__main__":
    main()
