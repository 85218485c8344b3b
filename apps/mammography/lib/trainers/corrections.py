"""The MONAI Label trainer of the active-learning loop: fine-tune the served model on the ``final`` labels.

MONAI Label runs ``POST /train/<model>`` in a background process (``GET /train/`` reports it, ``DELETE /train/``
stops it) that builds the app again and calls :class:`CorrectionsTrainer`. The trainer collects the clinicians'
corrections (labels with tag ``final``) from that process's datastore, whose index was read under the datastore's
lock when the process started (:class:`~lib.datastore.MammogramDatastore`: every label saved before the request,
none half-written), and hands them to :func:`mammoxai.training.corrections.finetune`, which runs the bundle's
``configs/train.json``; the new ``models/model.pt`` replaces the old one atomically and only when it is valid, and
the infer task's predictor reloads it on the next request, with no restart.

Two questions MONAI Label answers late or vaguely are answered up front by :func:`install_train_guard`: a
request when there is nothing to train on is a 422 naming the fix (instead of a background task that fails in
its log), and a request while a run is in progress is a 409 (MONAI Label says 429, "too many requests", which
invites retrying at once). A lock file next to the checkpoint makes the same guarantee for runs started any
other way: two runs never write the weights at the same time; the guard checks it too, so a run that outlived a
restart of the server (MONAI Label no longer lists it) is a 409 as well, not a new run that fails in its log.
``DELETE /train/`` answers once the stopped run has let go of the weights: MONAI Label kills the run's processes and
answers at once, while they may still be exiting and holding that lock, so a new ``POST /train/<model>`` straight
after the stop was refused with 409, as if a run the server does not know of held the weights.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from monai.bundle import ConfigParser
from monailabel.config import settings
from monailabel.endpoints import train as train_endpoints
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.async_tasks.utils import processes

from lib.http_errors import check_offered, client_errors, conflict, user_error_alone
from mammoxai.errors import MammoXAIError, parse_flag
from mammoxai.inference import MammogramPredictor
from mammoxai.io.atomic import atomic_write_bytes
from mammoxai.training.corrections import (
    ACCEPT_POLICIES,
    FinetuneResult,
    check_accept_policy,
    finetune,
    usable_corrections,
)
from mammoxai.training.settings import RUN_SETTINGS, check_run_settings

logger = logging.getLogger(__name__)

__all__ = ["CorrectionsTrainer", "final_corrections", "install_train_guard"]

TRAIN_OPTIONS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "val_fraction",
    "num_workers",
    "seed",
    "strict",
)
"""train.json keys a ``POST /train/<model>`` body may override (``strict: true`` stops the run when a correction
cannot be used, instead of leaving it out, :meth:`CorrectionsTrainer.check_ready`)."""

STRICT_DEFAULT = False
"""``strict`` of a run whose request does not set it: leave an unusable correction out (train.json's ``true`` is for
a bundle run over a manifest, where a record that cannot be read is a mistake in the data)."""

UNFINISHED = (
    "the run started {started} has not ended: it is in progress (GET /train/), or it was stopped (DELETE /train/) or "
    "its process died; the served model is unchanged"
)
"""The last run's reason in ``GET /info/`` from the moment it starts until it ends (a stopped run keeps it)."""

STOP_WAIT_S = 60.0
"""Longest ``DELETE /train/`` waits for the killed run's processes to exit and free the training lock; they take
milliseconds to seconds, and longer only on a machine that is very busy (the stop is answered then anyway)."""

MIN_PATIENTS = 2
"""Fewest patients with ``final`` labels a run needs: one to train on and one to validate on (the split is by
patient; an image whose header names no patient counts as its own)."""


def final_corrections(datastore: Datastore) -> list[tuple[str, str, str]]:
    """``(image_id, image_path, label_path)`` of every image with a ``final`` label, sorted by image id."""
    corrections = []
    for image_id in sorted(datastore.get_labeled_images(DefaultLabelTag.FINAL)):
        label = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL)
        image = datastore.get_image_uri(image_id)
        if label and image:
            corrections.append((image_id, image, label))
    return corrections


class CorrectionsTrainer(TrainTask):
    """Fine-tune the served classifier on the clinicians' ``final`` labels (see the module docstring).

    The request body of ``POST /train/<model>`` may set any of :data:`TRAIN_OPTIONS` (e.g. ``{"epochs": 2}``)
    and ``accept``: ``not_worse`` (default: keep the new weights only when their validation AUC is at least the
    current model's on the same patient-level split) or ``valid`` (keep any run with a finite loss and a computed
    metric). The last run's result, or why it failed, is kept in ``models/train_stats.json`` and shown by
    ``GET /info/``; from the moment a run starts until it ends they say so (:data:`UNFINISHED`), which a stopped run
    keeps.

    Args:
        bundle: the bundle folder; its ``configs/train.json`` is the recipe and ``models/model.pt`` the weights.
        predictor: the served predictor, for its class names, model grid, intensity scaling and device: a run
            trains on the images as the predictor prepares them, and the new ``model.pt`` records that input, so the
            predictor serves the weights it reloads as they were trained.
        defaults: train.json overrides applied before the request's, e.g. ``{"epochs": 5}``.

    Example:
        trainer = CorrectionsTrainer("monai_bundle", load_predictor("monai_bundle"))
        trainer({"epochs": 1}, datastore)  # {"accepted": True, "metric": 0.71, ...}
    """

    def __init__(
        self, bundle: str | os.PathLike, predictor: MammogramPredictor, defaults: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(
            "Fine-tune the classifier on the final labels (class per image), starting from the served model"
        )
        self.bundle = Path(bundle)
        self.predictor = predictor
        self.defaults = dict(defaults or {})

    @property
    def stats_path(self) -> Path:
        return self.predictor.checkpoint.path.with_name("train_stats.json")

    @property
    def lock_path(self) -> Path:
        """Held by a run while it trains; a run outlives the server that started it (MONAI Label's run is a process of
        its own), so after a restart only this lock tells that one is still going."""
        return self.predictor.checkpoint.path.with_name(".train.lock")

    def check_idle(self) -> None:
        """Refuse to start while any run holds :attr:`lock_path`, also one this server does not know of.

        Raises:
            MammoXAIError: a run holds the lock.
        """
        with _exclusive(self.lock_path):
            pass

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run holds :attr:`lock_path`, at most ``timeout`` seconds; whether none does.

        A killed run (``DELETE /train/``) holds it until its last process has exited, data-loader workers included:
        they share the lock's open file.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.check_idle()
                return True
            except MammoXAIError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def config(self) -> dict[str, Any]:
        """What ``GET /info/`` advertises: each option a request may set with the value a run takes when it does not
        (the trainer's defaults over the bundle's ``configs/train.json``), and the ``accept`` policies, the default
        first."""
        recipe = self._recipe()
        values = {key: recipe.get_parsed_content(key) for key in TRAIN_OPTIONS if key != "strict"}
        return {**values, "strict": STRICT_DEFAULT, **self.defaults, "accept": list(ACCEPT_POLICIES)}

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def check_request(self, request: Mapping[str, Any]) -> None:
        """Refuse a request body no run can use, before MONAI Label starts one that would fail in its log.

        Raises:
            MammoXAIError: a key that is not an option (a typo would otherwise be dropped, and the run go on with the
                default), an unknown ``accept`` policy, a training option out of range (checked over the recipe's
                values, as :func:`~mammoxai.training.settings.check_run_settings` checks a bundle run), or a
                ``strict`` that is not a boolean.
        """
        valid = sorted((*TRAIN_OPTIONS, "accept"))
        unknown = sorted(set(request) - set(valid))
        if unknown:
            raise MammoXAIError("training request", f"sets {unknown}, which are not options", f"set only {valid}")
        check_accept_policy(request.get("accept", "not_worse"))
        recipe = self._recipe()
        options = self.options(request)
        check_run_settings(
            **{key: options[key] if key in options else recipe.get_parsed_content(key) for key in RUN_SETTINGS}
        )
        parse_flag(options.get("strict", STRICT_DEFAULT), "strict")

    def _recipe(self) -> ConfigParser:
        """The bundle's ``configs/train.json``, read anew: its values are the defaults of a run."""
        recipe = ConfigParser()
        recipe.read_config(str(self.bundle / "configs" / "train.json"))
        return recipe

    def options(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The train.json overrides a request sets (:data:`TRAIN_OPTIONS`) over the trainer's defaults."""
        return {**self.defaults, **{key: request[key] for key in TRAIN_OPTIONS if key in request}}

    def check_ready(
        self, datastore: Datastore, options: Mapping[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The training records of the usable corrections, and why each other one is left out (image id -> reason).

        A correction whose image or label no run can use (its file replaced by a CT, a damaged file or an image of no
        breast after it was labelled, or a pair copied into the studies folder by hand) is left out, so that it
        does not cost the clinicians' other corrections their run (:func:`~mammoxai.training.corrections.
        usable_corrections`). At the request (``options`` without ``image_size``) the labels and image headers are
        read; the run passes its overrides, and the images are also preprocessed onto its grid with its intensity
        scaling, into its cache.

        Raises:
            MammoXAIError: a correction cannot be used under ``strict: true``, or the usable ``final`` labels cover
                fewer than :data:`MIN_PATIENTS` patients, or one class only (the validation AUC that decides whether
                new weights are served needs two).
        """
        options = options or {}
        records, left_out = usable_corrections(
            final_corrections(datastore),
            self.predictor.class_names,
            options.get("image_size"),
            options.get("cache_dir"),
            options.get("num_workers", 0),
            intensity_scaling=self.predictor.intensity_scaling,
            field_of_view=self.predictor.field_of_view,
        )
        unusable = "; ".join(f"image {image_id!r}: {reason}" for image_id, reason in left_out.items())
        if left_out and parse_flag(options.get("strict", STRICT_DEFAULT), "strict"):
            raise MammoXAIError(
                "training request",
                f"{len(left_out)} final label(s) cannot be used: {unusable}",
                "delete those images (DELETE /datastore/image), or train with strict false to leave them out",
            )
        patients = {record["patient_id"] for record in records}
        classes = sorted({record["case_label"] for record in records})
        if len(patients) < MIN_PATIENTS or len(classes) < 2:
            raise MammoXAIError(
                "training request",
                f"needs final labels of at least {MIN_PATIENTS} patients (one to validate on) and two classes (for "
                f"the validation AUC), the datastore has {len(records)} usable final label(s) of {len(patients)} "
                f"patient(s), class {classes}" + (f", and left out {unusable}" if left_out else ""),
                "correct more cases and save them with tag final (PUT /datastore/label?tag=final), then train",
            )
        return records, left_out

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        overrides = {
            **self.options(request),
            "image_size": list(self.predictor.image_size),
            "intensity_scaling": self.predictor.intensity_scaling,
            "field_of_view": self.predictor.field_of_view,
            "device": str(self.predictor.device),
            "cache_dir": str(self.bundle / "eval" / "cache"),
        }
        run: dict[str, Any] = {"corrections": 0, "left_out": {}, "overrides": overrides}
        checkpoint = self.predictor.checkpoint.path
        with _exclusive(self.lock_path):
            # /info must not go on showing the run before as the last one: a run stopped with DELETE /train/ (its
            # process is killed) or whose process dies writes nothing more, so the stats say it has not ended first
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            unfinished = FinetuneResult(False, UNFINISHED.format(started=started))
            self._save_stats({**unfinished.to_dict(), **run})
            try:
                records, run["left_out"] = self.check_ready(datastore, overrides)  # the pixels too, into the cache
                run["corrections"] = len(records)
                for image_id, reason in run["left_out"].items():
                    logger.warning(f"image {image_id!r} is left out of training: {reason}")
                # GET /train/ keeps the last 20 lines of the run's output: the user's error must end it
                with user_error_alone(), _scratch(self.bundle / "eval" / "train_run") as work:
                    result = finetune(
                        self.bundle, records, work, checkpoint, overrides, accept=request.get("accept", "not_worse")
                    )
            except Exception as error:  # noqa: BLE001 - said in the stats, then raised unchanged
                failed = FinetuneResult(False, f"the run failed: {_one_line(error)}; the served model is unchanged")
                self._save_stats({**failed.to_dict(), **run})
                raise
        stats = {**result.to_dict(), **run}
        self._save_stats(stats)
        return stats

    def _save_stats(self, stats: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.stats_path, json.dumps(stats, indent=2).encode("utf-8"))  # /info reads it any time


def _one_line(error: Exception) -> str:
    """A user error's message, or the first line of another error with its type (MONAI's config parser wraps what a
    component raises in a message that goes on with the component's whole config)."""
    if isinstance(error, MammoXAIError):
        return str(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@contextmanager
def _scratch(folder: Path) -> Iterator[Path]:
    """An empty ``folder`` for one run, removed after it. ``DELETE /train/`` kills the run's process, so no clean-up
    of its own runs: what a stopped run left (its manifest, logs and candidate checkpoint) is removed here, by the
    next run, which holds the training lock; a temporary folder would be left behind for good."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` or fail at once: two runs must never write the weights together."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            fix = (
                "wait for it (GET /train/) or stop it (DELETE /train/); a run started before the server restarted, or "
                f"from the command line, is not listed there and holds {lock_path.name} until it ends"
            )
            raise MammoXAIError(lock_path.parent, "is being trained by another run", fix) from error
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_train_guard(
    server: FastAPI, trainers: Mapping[str, CorrectionsTrainer], datastore: Callable[[], Datastore]
) -> None:
    """Answer ``POST /train/<model>`` with 404 / 422 / 409 before MONAI Label starts a background run: an unknown
    model, a request body no run can use, too few or one-class corrections, a run in progress.

    ``POST /train/`` (MONAI Label's "train every model", what its client sends when it names no model) is checked the
    same way for each trainer, with the request MONAI Label builds for it (``params[<model>]`` and then the
    top-level ``params``, the models' own keys left out); MONAI Label queues it behind a run in progress, so that is
    no 409. Unguarded, it answered 200 to a body no run can use and the run failed in its log.

    ``DELETE /train/`` stops the run with MONAI Label's handler, which kills its processes and answers at once, and
    then waits for them to exit and for the training lock to be free (:data:`STOP_WAIT_S` at most): the stop answered
    while a killed process still held the lock, and a run requested straight after it was refused with 409.

    The routes are put in front of MONAI Label's own, with the same role requirement, and pass a request they
    accept on to MONAI Label's handler, so status and stop work as documented by MONAI Label. They are plain
    functions, which FastAPI runs in its thread pool: the checks read every ``final`` label, and a run with
    ``run_sync=true`` trains, which on the server's event loop would hold up every other request until done.
    """
    router = APIRouter()

    def check_idle(trainer: CorrectionsTrainer) -> None:
        if not processes("train"):  # no run of this server: one it does not know of would make this one fail in its log
            with client_errors(HTTPStatus.CONFLICT):
                trainer.check_idle()

    @router.post(f"{settings.MONAI_LABEL_API_STR}/train/", include_in_schema=False)
    def train_all(
        params: dict | None = None,
        run_sync: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ) -> Any:
        params = params or {}
        shared = {key: value for key, value in params.items() if key not in trainers}
        for model, trainer in trainers.items():
            own = params.get(model)
            request = {**(own if isinstance(own, dict) else {}), **shared}
            with client_errors():
                trainer.check_request(request)
                trainer.check_ready(datastore(), trainer.options(request))
            check_idle(trainer)
        with client_errors():
            return train_endpoints.run(params, run_sync)

    @router.post(f"{settings.MONAI_LABEL_API_STR}/train/{{model}}", summary="Fine-tune the model on the final labels")
    def train(
        model: str,
        params: dict | None = None,
        run_sync: bool = False,
        enqueue: bool = False,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ) -> Any:
        check_offered("trainer", model, trainers)
        trainer = trainers[model]
        with client_errors():
            trainer.check_request(params or {})
            trainer.check_ready(datastore(), trainer.options(params or {}))
        if processes("train") and not enqueue:
            raise conflict(
                f"training of {model!r}",
                "is already running",
                "wait for it to finish (GET /train/), stop it (DELETE /train/) or pass enqueue=true to queue this one",
            )
        check_idle(trainer)
        with client_errors():
            return train_endpoints.run_model(model, params, run_sync, enqueue)

    @router.delete(f"{settings.MONAI_LABEL_API_STR}/train/", summary="Stop the training run")
    def stop(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))) -> Any:
        stopping = list(processes("train").values())  # MONAI Label forgets them as it kills them
        task = train_endpoints.stop()
        deadline = time.monotonic() + STOP_WAIT_S
        for process in stopping:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                logger.warning(f"the stopped training process {process.pid} has not exited after {STOP_WAIT_S:.0f} s")
        if stopping:  # the run's data-loader workers share its lock: it is free once the last of them has exited
            for trainer in trainers.values():
                if not trainer.wait_idle(max(deadline - time.monotonic(), 0.0)):
                    logger.warning(f"{trainer.lock_path} is still held {STOP_WAIT_S:.0f} s after the run was stopped")
        return task

    server.router.routes[0:0] = router.routes
