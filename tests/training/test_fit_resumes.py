"""A fit with a backup folder (a sweep's final run) stopped after some epochs and started
again goes on where it stopped: the same weights and optimizer, the best epoch from before
the stop still kept, weight averaging's two sets of weights each back in its place. The
whole loop through a sweep is in tests/search/test_sweep.py and
tests/search/test_sweep_state_and_shared_store.py."""

import time

import keras
import numpy as np
import pytest

from petloc.data.pipeline import ImageSet
from petloc.training.fit import (
    BACKUP_STATE,
    BACKUP_WEIGHTS,
    BEST_EPOCH,
    KeepBest,
    ResumedEarlyStopping,
    backed_up,
    best_epoch,
    fit_localiser,
)

SIZE = 32
HP = {
    "backbone": "simple",
    "width": 0.25,
    "head_units": 8,
    "image_size": SIZE,
    "aug_strength": 0.0,
    "batch_size": 4,
    "box_loss": "l1",
    "learning_rate": 1e-2,
}


def photos(n=8) -> ImageSet:
    rng = np.random.default_rng(0)
    boxes = np.tile([[0.2, 0.3, 0.6, 0.9]], (n, 1)).astype(np.float32)
    return ImageSet(
        rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.uint8),
        rng.integers(0, 2, n).astype(np.int32),
        boxes,
        [f"{i}.jpg" for i in range(n)],
        [""] * n,
    )


class StopAt(keras.callbacks.Callback):
    """Ctrl+C at the start of epoch `epoch` (counted from 0), after noting the weights the
    model would train on."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch, self.weights = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = [w.copy() for w in self.model.get_weights()]
            self.steps = int(self.model.optimizer.iterations)
            raise KeyboardInterrupt


class FirstEpoch(keras.callbacks.Callback):
    """The weights the model trains on at the start of its first epoch, and that epoch's number."""

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "epoch"):
            self.epoch, self.weights = epoch, [w.copy() for w in self.model.get_weights()]
            self.steps = int(self.model.optimizer.iterations)


def model_with(weights_value: float) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.set_weights([np.full(w.shape, weights_value, np.float32) for w in model.get_weights()])
    return model


def epochs_of(keep: KeepBest, model: keras.Model, scores: dict[float, float]) -> None:
    """Drives `keep` as a fit would: each epoch's weights, then its val_miou."""
    keep.set_model(model)
    keep.on_train_begin()
    for epoch, (value, score) in enumerate(scores.items()):
        model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])
        keep.on_epoch_end(epoch, {"val_miou": score})


@pytest.mark.parametrize(
    "after_the_stop, kept", [({3.0: 0.4, 4.0: 0.45}, 1.0), ({3.0: 0.4, 4.0: 0.7}, 4.0)]
)
def test_the_best_epoch_before_a_stop_is_kept_unless_a_later_one_beats_it(
    tmp_path, after_the_stop, kept
):
    model = model_with(0.0)
    # then the stop: no on_train_end
    epochs_of(KeepBest("val_miou", str(tmp_path)), model, {1.0: 0.6, 2.0: 0.5})
    resumed = KeepBest("val_miou", str(tmp_path))
    epochs_of(resumed, model, after_the_stop)
    resumed.on_train_end()
    assert all(np.all(w == kept) for w in model.get_weights())


def test_the_best_epoch_is_one_file_with_its_score_and_epoch(tmp_path):
    epochs_of(KeepBest("val_miou", str(tmp_path)), model_with(0.0), {1.0: 0.5, 2.0: 0.6, 3.0: 0.55})
    # no partial file left, no second file to pair up
    assert [p.name for p in tmp_path.iterdir()] == [BEST_EPOCH]
    assert best_epoch(tmp_path) == (pytest.approx(0.6), 2)


def test_without_a_folder_the_best_epoch_is_kept_in_memory_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = model_with(0.0)
    keep = KeepBest("val_miou")
    epochs_of(keep, model, {1.0: 0.6, 2.0: 0.5})
    keep.on_train_end()
    assert all(np.all(w == 1.0) for w in model.get_weights()) and not list(tmp_path.iterdir())


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_fit_stopped_and_started_again_goes_on_from_the_weights_it_stopped_with(
    tmp_path, ema, monkeypatch
):
    backup, data = tmp_path / "backup", photos()
    hp = {**HP, "ema": ema}
    stop = StopAt(epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fit_localiser(hp, data, data, epochs=4, callbacks=[stop], backup=str(backup))
    assert {p.name for p in backup.iterdir()} >= {BACKUP_WEIGHTS, BACKUP_STATE, BEST_EPOCH}

    # KeepBest must read the best epoch before the backup goes
    found, ends = ([], KeepBest.on_train_end)
    monkeypatch.setattr(
        KeepBest,
        "on_train_end",
        lambda self, logs=None: found.append((backup / BEST_EPOCH).is_file()) or ends(self, logs),
    )
    first = FirstEpoch()
    _model, history = fit_localiser(hp, data, data, epochs=4, callbacks=[first], backup=str(backup))
    assert first.epoch == 2 and len(history.history["loss"]) == 2 and found == [True]
    # the optimizer's state came back too (its step drives the schedule)
    assert first.steps == stop.steps > 0
    # With weight averaging the backup holds the average in the model (what was validated) and
    # the raw weights in the optimizer: the resumed epoch must train the raw ones, as the
    # uninterrupted fit would have.
    for resumed, stopped in zip(first.weights, stop.weights, strict=True):
        np.testing.assert_array_equal(resumed, stopped)
    assert not backup.exists()  # the fit ended: its state is gone


class StopAtTheEnd(keras.callbacks.Callback):
    """Ctrl+C once the last epoch is backed up, before the fit ends (and removes the backup)."""

    def on_train_end(self, logs=None):
        raise KeyboardInterrupt


def test_a_fit_stopped_after_its_last_epoch_ends_with_its_best_epoch_when_started_again(tmp_path):
    backup, data = tmp_path / "backup", photos()
    with pytest.raises(KeyboardInterrupt):
        fit_localiser(HP, data, data, epochs=2, callbacks=[StopAtTheEnd()], backup=str(backup))
    # A best epoch unlike the last one's weights (here the last epoch was the best): the fit must end with it.
    with np.load(backup / BEST_EPOCH) as saved:
        best = [np.full_like(saved[f"arr_{i}"], 0.5) for i in range(len(saved.files) - 2)]
    np.savez(backup / BEST_EPOCH, *best, score=np.float64(0.99), epoch=np.int64(1))
    first = FirstEpoch()
    model, history = fit_localiser(HP, data, data, epochs=2, callbacks=[first], backup=str(backup))
    # nothing left to train, and no error
    assert not hasattr(first, "epoch") and not history.history.get("loss")
    for got, kept in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(got, kept)
    assert not backup.exists()


class EarlyStopAtTheEnd(StopAtTheEnd):
    """Early stopping at the end of epoch `epoch` (counted from 0), then Ctrl+C before the fit ends."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = epoch == self.epoch


def test_a_fit_that_early_stopping_ended_trains_no_more_when_started_again_after_a_stop(tmp_path):
    backup, data = tmp_path / "backup", photos()
    with pytest.raises(KeyboardInterrupt):
        fit_localiser(
            HP, data, data, epochs=4, callbacks=[EarlyStopAtTheEnd(epoch=1)], backup=str(backup)
        )
    assert backed_up(backup).epochs == 2 and backed_up(backup).stopped
    first = FirstEpoch()
    _, history = fit_localiser(HP, data, data, epochs=4, callbacks=[first], backup=str(backup))
    assert not hasattr(first, "epoch") and not history.history.get("loss") and not backup.exists()


def early_stopping_after(model, stop: ResumedEarlyStopping, scores: dict[int, float]) -> int | None:
    """Drives `stop` through the given epochs as a fit would; the epoch it stopped at."""
    stop.set_model(model)
    model.stop_training = False
    stop.on_train_begin()
    for epoch, score in scores.items():
        stop.on_epoch_begin(epoch)
        stop.on_epoch_end(epoch, {"val_miou": score})
        if model.stop_training:
            return epoch
    return None


def test_early_stopping_counts_its_patience_from_the_best_epoch_before_a_stop(tmp_path):
    model, scores = model_with(0.0), {0: 0.6, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
    # a fit never stopped
    assert early_stopping_after(model, ResumedEarlyStopping("val_miou", 3), scores) == 3
    # epochs 0-2, then the stop
    epochs_of(KeepBest("val_miou", str(tmp_path)), model, {1.0: 0.6, 2.0: 0.5, 3.0: 0.5})
    resumed = {epoch: score for epoch, score in scores.items() if epoch >= 3}
    assert (
        early_stopping_after(model, ResumedEarlyStopping("val_miou", 3, str(tmp_path)), resumed)
        == 3
    )
    # a new best
    assert (
        early_stopping_after(
            model, ResumedEarlyStopping("val_miou", 3, str(tmp_path)), {3: 0.7, 4: 0.5}
        )
        is None
    )


class BackupClock(keras.callbacks.Callback):
    """When each epoch began, and the backup's state as each began."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.began, self.state = folder, {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.began[epoch], self.state[epoch] = time.perf_counter(), backed_up(self.folder)


def test_the_backup_counts_the_training_seconds_of_every_fit_that_resumed_it(tmp_path):
    backup, data = tmp_path / "backup", photos()
    with pytest.raises(KeyboardInterrupt):
        fit_localiser(HP, data, data, epochs=4, callbacks=[StopAt(epoch=2)], backup=str(backup))
    epochs, seconds, _ = backed_up(backup)
    assert epochs == 2 and seconds > 0
    clock = BackupClock(backup)
    fit_localiser(HP, data, data, epochs=4, callbacks=[clock], backup=str(backup))
    # As epoch 4 begins, the backup holds epoch 3: the seconds before the stop, and this fit's to there.
    assert clock.state[3][0] == 3 and clock.state[3][1] >= seconds + (
        clock.began[3] - clock.began[2]
    )


def test_a_best_epoch_file_without_score_and_epoch_is_one_line(tmp_path):
    from petloc.errors import PetlocError

    np.savez(tmp_path / BEST_EPOCH, weights=np.zeros(3))
    with pytest.raises(
        PetlocError,
        match=rf"^{tmp_path / BEST_EPOCH}: holds no best epoch this petloc reads; remove {tmp_path}",
    ):
        best_epoch(tmp_path)
