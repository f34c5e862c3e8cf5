"""Batch-1 latency of any Keras model, as a tracked search measures it on validation inputs."""

from __future__ import annotations

import statistics
import time
from typing import Any

import keras
import numpy as np

WARM_CALLS = 2  # the first calls trace the model or set it up: not what a user waits for


def batch1_latency_ms(model: keras.Model, inputs: Any, repeats: int = 20) -> float:
    """The median time (ms) of `model(x)` on one input at a time, the answer in hand,
    over `repeats` inputs taken in turn from `inputs` (an array or a dict of arrays)."""
    count = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    times = []
    for call in range(WARM_CALLS + repeats):
        i = call % count
        one = (
            {k: v[i : i + 1] for k, v in inputs.items()}
            if isinstance(inputs, dict)
            else inputs[i : i + 1]
        )
        start = time.perf_counter()
        np.asarray(model(one, training=False))
        if call >= WARM_CALLS:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
