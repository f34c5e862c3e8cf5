"""Keras Tuner sweeps: the search space as a HyperModel, tracked trials, and the sweep around them."""

# The chief's line when every trial has ended: the launcher of `--workers N` then waits for
# the end steps (final run, ensemble, promotion) instead of watching for gone workers.
SEARCH_OVER = "search over:"

# Where a sweep's chief listens for its workers unless told (kept here, free of TensorFlow, for `petloc --help`).
DEFAULT_CHIEF_ADDRESS = "127.0.0.1:8470"

# Child runs of a sweep besides its trials, by their trial_id tag (and leaderboard row): the
# best configuration trained at full length (final.py) and the average of the best (ensemble.py).
FINAL_TRIAL, ENSEMBLE_TRIAL = "final", "ensemble"


def trial_rows(rows: list[dict]) -> list[dict]:
    """The leaderboard's rows of the search's own trials."""
    return [row for row in rows if row["trial"] not in (FINAL_TRIAL, ENSEMBLE_TRIAL)]
