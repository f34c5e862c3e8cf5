"""Would tracking cost less off the training thread? The after-training work that a sweep
could leave to a background thread (curves, gallery, the model logged to MLflow) run during
the next trial's fit, against the same two run one after the other, on the `make run` trial
(experiments/quick.yaml: 1,500 synthetic pets, 48 px, `simple`, 6 epochs).

Quality and latency stay out of it: the trial's score must be known before the next trial is
drawn. The thread repeats the work until the fit ends, so the answer is many seconds of work
against the fit's spread (0.5 s and more in 12 s on these machines). The figure is the share
of the work the overlap hides: 1 = free, 0 = no gain (the fit slowed by as much as the work
took). Best of `--rounds` for each, the three taking turns.

    python benchmarks/tracking_overlap.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import threading
import time
from pathlib import Path

import common  # noqa: F401  (quiet TensorFlow before it loads)
from common import table, write_block
from tracking_speed import SIZE, experiment, fresh_project

from petloc.data.synth import generate
from petloc.tracking import log, runs, store
from petloc.training.dataset import gallery_image, prepare_data
from petloc.training.evaluate import quality
from petloc.training.fit import fit_localiser
from petloc.training.gallery import plot_curves, save_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    project = fresh_project("overlap")
    generate(project / "quick", count=1500, seed=0)
    exp = experiment(project / "quick", 6)
    hp = exp.fixed_hyperparameters()
    data = prepare_data(exp.data, SIZE, say=lambda _: None)
    store.configure(None)
    experiment_id = runs.experiment_id("bench")

    def fit():
        return fit_localiser(
            hp,
            data.train,
            data.val,
            exp.train.epochs,
            seed=exp.train.seed,
            precision=exp.train.precision,
        )

    with contextlib.redirect_stdout(io.StringIO()):
        model, history = fit()  # the previous trial, whose work is left to do
    _, pred = quality(model, data.val)

    def after_training():
        """What a background thread could take over: as `training_runs.score_and_log` does it."""
        run_id = runs.create_run(experiment_id, "overlap")
        with runs.run_status(run_id), log.scratch_dir() as tmp:
            files = {
                "gallery": save_rgb(
                    gallery_image(data.val, pred, exp.tracking.gallery_images),
                    Path(tmp) / "val_gallery.png",
                ),
                "": plot_curves(history.history, Path(tmp) / "curves.png"),
            }
            log.log_files(run_id, files)
            log.log_model(model, run_id)

    def overlapped() -> int:
        """The fit, with the work done over and over in a thread until it ends: many seconds
        of work, so the fit's own spread (0.5 s and more in 12 s) does not hide the answer."""
        done, stop = [], threading.Event()

        def keep_working():
            while not stop.is_set():
                after_training()
                done.append(1)

        worker = threading.Thread(target=keep_working)
        worker.start()
        fit()
        stop.set()
        worker.join()
        return len(done)

    best, works = {"fit": float("inf"), "work": float("inf"), "both": float("inf")}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        after_training()  # warm: the first model logging imports and sets up
        for _ in range(args.rounds):
            for name, run in (("fit", fit), ("work", after_training), ("both", overlapped)):
                start = time.perf_counter()
                out = run()
                took = time.perf_counter() - start
                if took < best[name]:
                    best[name] = took
                    if name == "both":
                        works["both"] = out
    count = works["both"]
    work = count * best["work"]
    serial = best["fit"] + work
    hidden = (serial - best["both"]) / work
    rows = [
        ["the next trial's fit alone", f"{best['fit']:.2f} s", ""],
        [
            "the after-training work alone (curves, gallery, model logged)",
            f"{best['work']:.2f} s",
            "",
        ],
        [
            f"fit and the work {count} times, one after the other / the work in a thread during the fit",
            f"{serial:.2f} / {best['both']:.2f} s",
            f"{serial / best['both']:.3f}x",
        ],
        ["share of the work the overlap hides (1 = free, 0 = none)", f"{hidden:.2f}", "reported"],
    ]
    print(*rows, sep="\n", flush=True)
    write_block(
        "overlap",
        "Tracking off the training thread: `python benchmarks/tracking_overlap.py`",
        table(["what", "measured", "ratio"], rows)
        + f"\n\nBest of {args.rounds} rounds each, the three taking turns.",
    )


if __name__ == "__main__":
    main()
