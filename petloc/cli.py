"""The `petloc` command. Thin: it parses, calls the modules, and prints.

A user error (PetlocError) is one line on stderr and exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path

TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ  # a level the user set always wins
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not for users

import click

from petloc import __version__, stopping
from petloc.errors import COMMAND_ENV, PetlocError, did_you_mean
from petloc.quiet import libraries_quiet
from petloc.search import DEFAULT_CHIEF_ADDRESS

# As the experiment file bounds them (petloc.config), without importing it for --help.
SEED = click.IntRange(0, 2**31 - 1)
MIN_IMPROVEMENT = 0.01  # registry.min_improvement's default
MAX_SYNTHETIC = 1_000_000


class CommandLine(click.Group):
    """The petloc group; it notes the command line it was given, for the runs' provenance."""

    def parse_args(self, ctx, args):
        os.environ[COMMAND_ENV] = shlex.join(["petloc", *args])
        return super().parse_args(ctx, args)


class FiniteFloat(click.FloatRange):
    """A number within a range, never nan or inf: nan passes every comparison of FloatRange,
    so a budget of nan would be accepted and then never apply."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Choice(click.Choice):
    """click's Choice, whose error also names the choice a typo likely meant."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as err:
            hint = did_you_mean(str(value), map(str, self.choices))
            if not hint:
                raise
            self.fail(f"{err.message.rstrip('.')};{hint}", param, ctx)


def tta_option(help_text: str):
    """`--tta none|flip`, test-time augmentation, as `evaluate` and `export` take it."""
    return click.option(
        "--tta", type=Choice(["none", "flip"]), default="none", show_default=True, help=help_text
    )


@click.group(cls=CommandLine, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="petloc", message="%(prog)s %(version)s")
@click.option(
    "--verbose",
    is_flag=True,
    help="Also show TensorFlow's start-up log, Keras's own progress with every metric, and failed trials' tracebacks.",
)
def cli(verbose):
    """petloc: find the head of a cat or dog; sweep, track and pull the best model by name."""
    # read by petloc.training.progress
    logging.getLogger("petloc").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not TF_LOG_LEVEL_FROM_USER:
        # Quiet: TensorFlow's C++ errors too (such as "failed call to cuInit" on a machine
        # without a GPU); a real failure reaches Python as an exception.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if verbose else "3"
    libraries_quiet(verbose)
    if not verbose:
        # MLflow loads each model it logs to check it; Keras then warns that the optimizer's
        # state is not restored, which inference never needs.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def train(experiment, overrides):
    """One tracked training run with the experiment's fixed hyperparameters.

    OVERRIDES are key=value pairs such as data.path=../photos space.backbone=simple train.epochs=5.
    """
    from petloc import api

    # a bad file is one line before TensorFlow loads
    for line in api.train(experiment, overrides, say=click.echo).summary:
        click.echo(line)


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def config(experiment, overrides):
    """The experiment as it would run, as YAML: every section with its defaults filled in,
    and the hyperparameters `petloc train` would use.

    OVERRIDES are key=value pairs, as for train and sweep. The output is itself an experiment file.
    """
    from petloc.config import load_experiment

    for line in load_experiment(experiment, overrides).as_yaml(experiment, overrides):
        click.echo(line)


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def pretrain(experiment, overrides):
    """Pretrain a backbone as a cat / dog classifier and register it for transfer.

    Uses the experiment's data and its `pretrain:` section (overrides such as
    pretrain.epochs=30). A localiser then starts from it with
    space.backbone=registered:petloc-backbone@champion.
    """
    from petloc.config import load_experiment

    exp = load_experiment(experiment, overrides)  # a bad file is one line before TensorFlow loads

    from petloc.report import table
    from petloc.tracking import registry
    from petloc.tracking.training_runs import pretrain_run

    run = pretrain_run(exp, click.echo)
    click.echo(table([run.summary]))
    promotion = registry.promote(run.run_id, exp.pretrain.register_as, exp.pretrain.alias)
    click.echo(f"registry: {promotion.reason}")
    # Quoted for the shell: a registered name may hold spaces or quotes.
    backbone = f"space.backbone=registered:{exp.pretrain.register_as}@{exp.pretrain.alias}"
    click.echo(f"use it: petloc train {shlex.quote(experiment)} {shlex.quote(backbone)}")


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--fresh", is_flag=True, help="Forget this sweep's earlier trials and start over.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Run the trials in N worker processes on this machine, with a chief process holding the search.",
)
@click.option(
    "--chief",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[HOST:PORT]",
    help="Alone: be the sweep's chief, which workers on other machines ask for trials. "
    "With --worker: the chief's address.",
)
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help=f"Where the chief listens for workers (default {DEFAULT_CHIEF_ADDRESS}; 0.0.0.0:PORT for other machines).",
)
@click.option(
    "--worker",
    "worker_id",
    default=None,
    metavar="ID",
    help="Be worker ID of the sweep whose chief runs at --chief HOST:PORT.",
)
@click.option(
    "--worker-timeout",
    type=FiniteFloat(10),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Chief: a worker not heard from this long has its trial marked failed.",
)
def sweep(experiment, overrides, fresh, workers, chief, address, worker_id, worker_timeout):
    """Keras Tuner sweep over the experiment's space; every trial an MLflow run; the best promoted.

    Running the same sweep again continues where it stopped. With --workers, --chief or
    --worker, the trials run in several processes or machines, all logging to one tracking
    server (tracking.uri or MLFLOW_TRACKING_URI; petloc tracking-server starts one).
    """
    import time

    from petloc.config import load_experiment

    if worker_id is not None:
        if not chief or address or workers or fresh:
            raise PetlocError(
                "--worker ID needs --chief HOST:PORT, and takes neither --address, --workers nor --fresh"
            )
    elif workers is not None and (chief is not None or address):
        raise PetlocError(
            "--workers N starts its own chief on this machine; leave out --chief and --address"
        )
    elif address and chief is None:
        raise PetlocError("--address is where a chief listens: use it with --chief")

    exp = load_experiment(experiment, overrides)
    start = time.perf_counter()
    if workers is not None:
        from petloc.search.launcher import run_on_this_machine
        from petloc.tracking import store

        # a refused password is one line here, not one per process
        store.configure(exp.tracking.uri)

        sys.exit(
            run_on_this_machine(experiment, overrides, workers, fresh, worker_timeout, click.echo)
        )
    if worker_id is not None:
        from petloc.search.worker import run_worker

        run_worker(exp, worker_id, chief, say=click.echo)
        return
    if chief is None:
        from petloc import api

        summary = api.sweep(exp, fresh=fresh, say=click.echo).summary
    else:
        from petloc.search.chief import run_chief
        from petloc.search.summary import sweep_summary

        result = run_chief(
            exp, chief or address or DEFAULT_CHIEF_ADDRESS, fresh, worker_timeout, click.echo
        )
        model_ref = f"{exp.registry.name}@{exp.registry.alias}"
        summary = sweep_summary(exp.name, result, time.perf_counter() - start, model_ref)
    for line in summary:
        click.echo(line)


@cli.command()
@click.argument("run_id")
@click.option(
    "--name",
    default=None,
    help="Registered model name (default: the registry.name of the run's experiment file).",
)
@click.option("--alias", default="champion", show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Move the alias even when the run is not better (or over the latency budget).",
)
@click.option(
    "--max-latency-ms",
    type=FiniteFloat(0, min_open=True),
    default=None,
    help="Refuse a run whose batch-1 latency is over this budget.",
)
@click.option(
    "--min-improvement",
    type=FiniteFloat(0),
    default=None,
    help="Val mIoU differences at or below this are ties, won by the lower batch-1 latency "
    f"(default: the registry.min_improvement of the run's experiment file, else {MIN_IMPROVEMENT:g}).",
)
def promote(run_id, name, alias, force, max_latency_ms, min_improvement):
    """Register RUN_ID's model; it takes ALIAS when it beats the current holder (or --force).

    It beats the holder with a val mIoU higher by more than --min-improvement, or within it
    (a tie) and a lower batch-1 latency.
    """
    from petloc.registry_names import check_alias, check_name

    check_alias(alias, "--alias")  # before the store is opened: a bad name changes nothing
    if name is not None:
        check_name(name, "--name")
    from petloc.tracking import registry, store

    store.configure()
    logged = registry.registry_settings_of(run_id)
    promotion = registry.promote(
        run_id,
        name or logged.name,
        alias,
        force=force,
        max_latency_ms=max_latency_ms,
        min_improvement=logged.min_improvement if min_improvement is None else min_improvement,
    )
    click.echo(promotion.reason)


@cli.command()
@click.argument("run_id")
@click.option(
    "--force", is_flag=True, help="Go on when the data or the code differ from the run's."
)
def reproduce(run_id, force):
    """Train RUN_ID (a training run or trial) again from what it logged, and compare.

    The new run is tagged `reproduces`. Refused when the data digest or the git commit differ
    from the run's, unless --force.
    """
    from petloc.report import table
    from petloc.tracking.reproduce import reproduce as reproduce_run

    result = reproduce_run(run_id, force=force, say=click.echo)
    click.echo(table(result.figures))
    click.echo(f"reproduction: MLflow run {result.run_id} (tag reproduces={run_id})")


@cli.command()
def models():
    """Registered models, their versions, aliases and figures."""
    from petloc.report import table
    from petloc.tracking import registry, store

    store.configure()
    rows = registry.list_versions()
    click.echo(
        table(rows) if rows else "no registered models yet: run a sweep, or petloc promote RUN_ID"
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1), help="Web server processes."
)
@click.option(
    "--no-auth",
    "no_auth",
    is_flag=True,
    help="Serve a --host beyond this machine without users: anyone who reaches it may change and delete every run.",
)
def ui(host, port, workers, no_auth):
    """The MLflow UI on the project's store (mlruns/)."""
    from petloc.tracking.ui import serve_ui

    code = serve_ui(host, port, workers, allow_unauthenticated=no_auth, say=click.echo)
    if code:
        sys.exit(code)


@cli.command("tracking-server")
@click.option(
    "--backend",
    metavar="URI",
    help="Database of runs and models, e.g. postgresql://USER@HOST:5432/DB  [default: the project's sqlite:///mlruns/mlflow.db]",
)
@click.option(
    "--artifacts",
    metavar="DIR",
    help="Where the server keeps artifacts (a folder or s3://...); clients send them through the "
    "server  [default: mlruns/artifacts]",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="0.0.0.0 serves other machines too (with --auth or --no-auth).",
)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers", default=4, show_default=True, type=click.IntRange(1), help="Web server processes."
)
@click.option(
    "--allowed-hosts",
    metavar="NAMES",
    default="",
    help="Host names clients use besides localhost and IP addresses, comma-separated (with "
    "--host 0.0.0.0 this machine's name is allowed already).",
)
@click.option(
    "--auth/--no-auth",
    default=None,
    help="Users, passwords and per-experiment and per-model permissions (MLflow's basic-auth app); "
    "one of the two is needed to serve beyond this machine.",
)
@click.option(
    "--admin-password-file",
    metavar="FILE",
    help="With --auth: the admin user's first password (its first line); default: $MLFLOW_AUTH_ADMIN_PASSWORD.",
)
@click.option(
    "--auth-db",
    metavar="URI",
    help="With --auth: database of users and permissions  [default: basic_auth.db beside a "
    "SQLite store, else the backend's database]",
)
@click.option(
    "--default-permission",
    type=Choice(["NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE"]),
    default="READ",
    show_default=True,
    help="With --auth: what a user may do with experiments and models others made, without a grant.",
)
def tracking_server(
    backend,
    artifacts,
    host,
    port,
    workers,
    allowed_hosts,
    auth,
    admin_password_file,
    auth_db,
    default_permission,
):
    """An MLflow tracking server for many processes or machines (`mlflow server`, artifacts proxied)."""
    from petloc.tracking import server
    from petloc.tracking.auth import DEFAULT_PERMISSION, Auth

    if not auth and (admin_password_file or auth_db or default_permission != DEFAULT_PERMISSION):
        raise PetlocError(
            "--admin-password-file, --auth-db and --default-permission go with --auth"
        )
    names = [name.strip() for name in allowed_hosts.split(",") if name.strip()]
    door = Auth(auth_db, default_permission, admin_password_file) if auth else auth
    server.serve(backend, artifacts, host, port, workers, names, door, say=click.echo)


@cli.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=click.IntRange(1, 65535))
def serve(model, host, port):
    """MODEL over REST with MLflow's scoring server, on the project's store.

    MODEL: petloc@champion, petloc/3, models:/..., runs:/RUN/model or a model folder.
    POST {"dataframe_records": [{"image": "<base64 JPEG>"}]} to /invocations.
    """
    from petloc.tracking.model_server import serve_model

    serve_model(model, host, port, say=click.echo)  # the scoring server then owns this process


@cli.command()
@click.argument("model")
@click.argument("data", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@click.option("--on-bad", type=Choice(["skip", "fail"]), default="skip", show_default=True)
@click.option(
    "--subset",
    type=Choice(["all", "train", "val"]),
    default="all",
    show_default=True,
    help="Only one side of the split a run made of DATA (same --val-split and --seed as its experiment).",
)
@click.option(
    "--val-split",
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
    default=0.15,
    show_default=True,
)
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="The split's seed (data.seed)."
)
@tta_option("flip: also average each photo with its mirror image (on top of what the model does).")
def evaluate(model, data, as_json, on_bad, subset, val_split, seed, tta):
    """mIoU, IoU >= 0.5 share, accuracy and latency of MODEL on the dataset at DATA."""
    from petloc import api
    from petloc.report import table

    result = api.evaluate(
        model,
        data,
        on_bad=on_bad,
        subset=subset,
        val_split=val_split,
        seed=seed,
        tta=tta,
        say=None if as_json else lambda line: click.echo(line, err=True),  # skipped files
    )
    click.echo(json.dumps(result.figures) if as_json else table([result.figures]))


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per image.")
@click.option(
    "--out",
    type=click.Path(),
    help="Write annotated copies of the images here (never over an existing file: x.png, x-2.png, ...).",
)
def predict(model, images, as_json, out):
    """Class and head box for each image, one line each.

    An unreadable image gets an error line and the rest go on. Exit code 0 when every image
    was answered, 1 when any failed (unreadable, or its annotated copy not written), 2 for a
    bad MODEL or --out. A photo the decoder had to repair gets a warning with its answer.
    """
    from petloc.data.images import max_image_bytes, max_image_pixels
    from petloc.training.gallery import writable_folder

    # before TensorFlow and the model load: a mistake costs no wait
    folder = writable_folder(out) if out else None
    max_image_bytes(), max_image_pixels()  # a mistyped limit too
    from petloc.tracking.registry import load_predictor
    from petloc.training.predict import predict_files

    failed = 0
    for row in predict_files(load_predictor(model), list(images), folder):
        _print_prediction(row, as_json)
        failed += "error" in row
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("model")
@click.option(
    "--format", "format_", required=True, metavar="savedmodel|tflite|onnx", help="What to write."
)
@click.option("--out", required=True, type=click.Path(), help="A new or empty folder.")
@click.option(
    "--data",
    type=click.Path(),
    help="Check the export on the photos in this folder  [default: the validation photos of "
    "MODEL's run when MODEL is from MLflow and their folder is readable, else a few synthetic "
    "photos]",
)
@click.option(
    "--tolerance",
    type=FiniteFloat(0),
    default=None,
    help="Largest difference from the Keras model, in box corners (fractions of the image side) "
    "and class scores, that the export may show  [default: 1e-3]",
)
@tta_option("flip: bake averaging each photo with its mirror image into the export.")
def export(model, format_, out, data, tolerance, tta):
    """MODEL for another runtime: a TensorFlow SavedModel, TFLite or ONNX, in folder OUT.

    MODEL: petloc@champion, petloc/3, models:/..., runs:/RUN/model or a .keras file. The
    export is run beside the Keras model on photos and kept only when it answers the same
    within the tolerance; OUT/petloc.json names its classes and input size, and the version
    and run MODEL resolved to. `petloc predict OUT` (or OUT/model.tflite) answers with it.
    """
    from petloc import api

    given = {} if tolerance is None else {"tolerance": tolerance}
    api.export(model, format_, out, data=data, tta=tta, say=click.echo, **given)


def _print_prediction(row: dict, as_json: bool) -> None:
    from petloc.quantities import SCORE
    from petloc.report import figure

    if as_json:
        click.echo(json.dumps(row))
    elif "error" in row:
        click.echo(f"{row['image']}: error: {row['error']}")
    else:
        warning = f" (warning: {row['warning']})" if "warning" in row else ""
        click.echo(
            f"{row['image']}: {row['label']} {figure(SCORE, row['score'])} box {row['box']}{warning}"
        )


@cli.command()
@click.argument("experiment", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--plugin",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Also a plug-in module's backbones (repeatable); installed plug-ins are always listed.",
)
def hyperparameters(experiment, modules):
    """Every searchable hyperparameter: type, default, bounds or choices, and what it does.

    Backbones include the installed plug-ins' and, given an EXPERIMENT file, its `plugins:`."""
    from petloc import hyperparams, plugins
    from petloc.config import load_experiment
    from petloc.report import table

    if experiment:
        load_experiment(experiment)  # imports its plug-ins
    plugins.import_plugins(modules, "--plugin")

    click.echo(table(hyperparams.rows()))


@cli.group()
def data():
    """Make and inspect datasets."""


@data.command()
@click.option(
    "--out", default="data/synthetic", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--count", default=1500, show_default=True, type=click.IntRange(1, MAX_SYNTHETIC))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--size", default=128, show_default=True, type=click.IntRange(32, 1024))
def synth(out, count, seed, size):
    """Deterministic synthetic pet photos with exact head boxes, in the cats_dogs layout."""
    import time

    from petloc.data.synth import generate

    start = time.perf_counter()
    generate(Path(out), count=count, seed=seed, size=size)
    click.echo(f"wrote {count} images to {out} in {time.perf_counter() - start:.1f} s")


@data.command()
@click.option(
    "--out", default="data/oxford-iiit-pet", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--url",
    default=None,
    help="Base URL of the two archives (a mirror, or file:///folder/); default: the official site.",
)
@click.option(
    "--val-share",
    default=0.15,
    show_default=True,
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
)
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--force", is_flag=True, help="Redo the conversion even when it is there.")
@click.option(
    "--md5",
    multiple=True,
    metavar="NAME=MD5",
    help="Expected MD5 of an archive on your mirror, instead of the official one (repeatable).",
)
@click.option(
    "--replace-foreign",
    is_flag=True,
    help="Replace an OUT/cats_dogs petloc did not make: moved aside to cats_dogs.old-<time>, not deleted.",
)
def oxford(out, url, val_share, seed, force, md5, replace_foreign):
    """Download the Oxford-IIIT Pet archives and convert the head boxes to the cats_dogs layout."""
    from petloc.data.oxford_download import OFFICIAL_BASE, download_oxford, parse_digests

    converted = download_oxford(
        Path(out),
        base_url=url or OFFICIAL_BASE,
        val_share=val_share,
        seed=seed,
        say=click.echo,
        force=force,
        digests=parse_digests(md5),
        replace_foreign=replace_foreign,
    )
    click.echo(f"ready: {converted}  (petloc sweep experiments/cats_dogs.yaml uses it by default)")


@data.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.option("--on-bad", type=Choice(["skip", "fail"]), default="skip", show_default=True)
@click.option(
    "--labels",
    type=Choice(["species", "breed"]),
    default="species",
    show_default=True,
    help="A photo's class: its species, or its breed where the data names one.",
)
def check(path, as_json, on_bad, labels):
    """Counts per class and split, box statistics, and every problem found."""
    from petloc.data.check import check_dataset, format_report

    report = check_dataset(path, on_bad=on_bad, labels=labels)
    click.echo(json.dumps(report.to_dict()) if as_json else format_report(report))


def main() -> None:
    stopping.install()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort as err:  # click turns KeyboardInterrupt into Abort
        _stopped(err.__cause__)
    except Exception as err:
        stop = stopping.interrupt_behind(err)
        if stop is not err:  # a library turned the stop into its own error
            _stopped(stop)
        if isinstance(err, PetlocError):
            click.echo(f"petloc: error: {err}", err=True)
            sys.exit(2)
        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        refused = _tracking_refusal(err)
        if refused:
            click.echo(f"petloc: error: {refused}", err=True)
            sys.exit(2)
        raise


def _tracking_refusal(err: Exception) -> str | None:
    """A tracking server's refusal (credentials, a missing permission) met after the start check."""
    from petloc.api import tracking_refusal

    return tracking_refusal(err)


def _stopped(interrupt: BaseException | None) -> None:
    terminated = isinstance(interrupt, stopping.Terminated)
    click.echo(f"petloc: {'terminated' if terminated else 'aborted'}", err=True)
    sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
