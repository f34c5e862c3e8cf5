"""Your own Keras Tuner search, tracked in MLflow by petloc: one line changes.

A small classifier of handwritten digits (scikit-learn's bundled `load_digits`, no download),
written as any Keras Tuner user writes one, tuned by `TrackedTuner` instead of
`kt.BayesianOptimization`. The search becomes one MLflow parent run with a child run per
trial; the best trial becomes `digits-classifier@champion` in the registry, which is then
loaded by name with plain MLflow and scored on digits no trial has seen.

    python examples/track_your_own_search.py [--trials 4] [--epochs 8] [--folder .]

The runs go to the folder's mlruns/ (as petloc's own do), Keras Tuner's state to its
tuner/digits/. Run it again and the search resumes: finished trials are kept, none is
logged twice. About a minute on two CPU cores. Browse it with `mlflow ui --backend-store-uri
sqlite:///mlruns/mlflow.db` (or `petloc ui`) in that folder.
"""

import argparse
import os
from pathlib import Path

import keras
import keras_tuner as kt
import mlflow
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from petloc import TrackedTuner

REGISTRY = "digits-classifier"


class DigitsClassifier(kt.HyperModel):
    """What a Keras Tuner user already has: petloc knows nothing about this model."""

    def build(self, hp):
        model = keras.Sequential(
            [
                keras.Input((64,)),  # 8x8 pixels, flattened
                keras.layers.Dense(
                    hp.Int("units", 16, 128, step=16), hp.Choice("activation", ["relu", "tanh"])
                ),
                keras.layers.Dropout(hp.Float("dropout", 0.0, 0.4, step=0.1)),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 2e-2, sampling="log")),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model


def digits(seed: int):
    """Train, validation (what the trials are scored and compared on) and held-out test
    digits (what no trial sees), pixels scaled to 0..1."""
    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target
    x, x_test, y, y_test = train_test_split(x, y, test_size=300, stratify=y, random_state=seed)
    x, x_val, y, y_val = train_test_split(x, y, test_size=300, stratify=y, random_state=seed)
    return (x, y), (x_val, y_val), (x_test, y_test)


def at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=at_least_one, default=4, help="trials to try (default 4)")
    parser.add_argument(
        "--epochs", type=at_least_one, default=8, help="epochs per trial (default 8)"
    )
    parser.add_argument("--folder", type=Path, default=Path("."), help="where to work (default .)")
    parser.add_argument("--seed", type=int, default=1, help="the split's, the search's and Keras's")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    os.chdir(args.folder)  # petloc's default store is ./mlruns/mlflow.db, as for its own runs
    keras.utils.set_random_seed(args.seed)
    (x, y), (x_val, y_val), (x_test, y_test) = digits(args.seed)

    # The one line: kt.BayesianOptimization(DigitsClassifier(), objective="val_accuracy",
    # max_trials=..., directory=..., project_name=...) becomes
    tuner = TrackedTuner(
        DigitsClassifier(),
        objective="val_accuracy",
        oracle="bayesian",
        max_trials=args.trials,
        experiment="digits-search",  # the MLflow experiment
        registry=REGISTRY,  # the best trial is offered to digits-classifier@champion
        latency=True,  # each trial's batch-1 latency (ms), on validation digits
        pareto="latency_ms_b1",  # pareto.png: val_accuracy against latency
        seed=args.seed,
        directory="tuner",  # Keras Tuner's own state: what a resumed search continues
        project_name="digits",
    )
    # Keras Tuner's own calls, unchanged
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=args.epochs, verbose=0)
    tuner.results_summary(num_trials=1)

    if tuner.result is None or tuner.result.promotion is None:  # its "registry:" line said why
        raise SystemExit(f"no {REGISTRY}@champion to load")

    # The champion by its name, with MLflow alone: what anyone else on the team would do.
    champion = mlflow.pyfunc.load_model(f"models:/{REGISTRY}@champion")
    version = mlflow.MlflowClient().get_model_version_by_alias(REGISTRY, "champion")
    probabilities = np.asarray(champion.predict(x_test))
    best = tuner.get_best_models(num_models=1)[0]  # Keras Tuner's own way to the best model
    difference = float(np.abs(probabilities - best.predict(x_test, verbose=0)).max())
    accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    print(f"\nchampion: {REGISTRY}@champion is version {version.version} (run {version.run_id})")
    same = "yes" if difference < 1e-5 else "no"
    print(
        f"same predictions as tuner.get_best_models()[0]: {same} (largest difference {difference:.1e})"
    )
    print(f"held-out accuracy of the champion: {accuracy:.3f} on {len(y_test)} digits no trial saw")


if __name__ == "__main__":
    main()
