"""One reviewer's session with the server: next case, prediction, correction, training — without Slicer.

:class:`ReviewSession` is the logic behind every button of the MammoXAI panel. It knows no widget and no MRML
node: the Slicer module loads the files it returns into volumes, shows its table rows, and hands it the lesion
marks already converted to pixels (:mod:`MammoXAILib.geometry`). Keeping the workflow here lets pytest drive it
against a real server, and keeps the Qt layer thin.

Faults never lose work: a correction is stored on disk before it is sent and stays there until the server
accepts it (:class:`~MammoXAILib.corrections.PendingCorrections`, kept apart by server); :meth:`ReviewSession.connect`
and each accepted :meth:`ReviewSession.submit` send what is left for this server from an earlier attempt.

Example:
    session = ReviewSession("http://127.0.0.1:8000", work_folder, pending_folder, annotator="dr.smith")
    info = session.connect()
    case = session.next_case("uncertainty")
    outcome = session.run(case.image_id, saliency_method="gradcam")
    label = session.make_label("malignant", birads="4", lesions=[box], image_shape=outcome.view.image_shape)
    session.submit(case.image_id, label)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .client import MammoXAIClient
from .corrections import PendingCorrections
from .errors import MammoXAIClientError
from .geometry import check_heatmap
from .prediction import PredictionView, parse_prediction

__all__ = ["BIRADS", "STRATEGIES", "Case", "InferenceOutcome", "ReviewSession", "ServerInfo", "TrainingStatus"]

STRATEGIES = ("uncertainty", "random", "first")
"""Active-learning strategies in the order the panel prefers them; a strategy the server lacks falls back."""

BIRADS = ("0", "1", "2", "3", "4", "5", "6")

FINAL_STATES = ("DONE", "ERROR", "STOPPED")
"""MONAI Label's states of a training task that no longer change; SUBMITTED (queued) and RUNNING do."""

_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(\w*(?:Error|Exception)): (.+)$")
"""The last line of a Python traceback, e.g. ``mammoxai.errors.MammoXAIError: <message>``: (type, message)."""


@dataclass(frozen=True)
class ServerInfo:
    """What ``/info/`` says about the server and its MammoXAI model."""

    url: str
    name: str
    version: str
    model: str
    class_names: list[str]
    strategies: list[str]
    trainers: list[str]
    description: str
    saliency_methods: list[str]
    """Methods the server can explain with on its model grid (its ``/info``), in the server's order."""
    saliency_method: str
    """The server's configured method, used when a request names none."""

    @property
    def summary(self) -> str:
        training = "training available" if self.trainers else "no training on this server"
        return f"{self.name} {self.version}: model {self.model!r} ({', '.join(self.class_names)}); {training}"


@dataclass(frozen=True)
class TrainingStatus:
    """The panel's training line, and whether asking the server again could change it."""

    line: str
    ended: bool
    """The run reached a final state, none has run, or the status cannot be read for a reason that lasts: the
    panel stops polling. A queued or running run, or a server down for a moment, keeps it polling."""


@dataclass(frozen=True)
class Case:
    """An image to review, downloaded into the work folder."""

    image_id: str
    image_path: str
    strategy: str
    note: str = ""


@dataclass(frozen=True)
class InferenceOutcome:
    """A prediction ready to show, its heatmap file (``None`` when the server sent none) and notes for the user."""

    image_id: str
    view: PredictionView
    heatmap_path: str | None
    notes: list[str] = field(default_factory=list)


class ReviewSession:
    """Connect to a MammoXAI server and review cases one after the other.

    Args:
        url: server address.
        work_folder: where downloaded images and heatmaps go (may be a temporary folder).
        pending_folder: where unsent corrections are kept; must survive a restart of Slicer.
        token: bearer token for a server with authentication.
        annotator: name written into each label (``"unknown"`` when empty).
        timeout: seconds for short calls; ``infer_timeout`` for inference.
    """

    def __init__(
        self,
        url: str,
        work_folder: str,
        pending_folder: str,
        token: str | None = None,
        annotator: str = "",
        timeout: float = 30.0,
        infer_timeout: float = 300.0,
    ) -> None:
        self.client = MammoXAIClient(url, token=token, timeout=timeout, infer_timeout=infer_timeout)
        self.work_folder = work_folder
        self.pending = PendingCorrections(pending_folder, self.client.url)
        self.annotator = annotator.strip() or "unknown"
        self.info: ServerInfo | None = None

    # ---------------------------------------------------------------- connect
    def connect(self, username: str = "", password: str = "") -> ServerInfo:
        """Log in when a user name is given, read the server's info and send this server's corrections left from
        before (:meth:`pending_summary` says what is still kept).

        Args:
            username: for a server with authentication (``POST /auth/token`` through its identity provider); the
                token is renewed with these credentials when it expires during the session. Ignored by a server
                without authentication.
            password: the user's password.

        Raises:
            MammoXAIClientError: the server cannot be reached or is no MammoXAI server, the login is refused, or
                the server asks for a login and no user name was given.
        """
        if username.strip():
            self.client.login(username.strip(), password)
            self.annotator = self.annotator if self.annotator != "unknown" else username.strip()
        try:
            raw = self.client.info()
        except MammoXAIClientError as error:
            if error.status == 401 and not self.client.token:
                message = f"{self.client.url} asks for a login: enter your user name and password, then connect"
                raise MammoXAIClientError(message, "http", 401) from error
            raise
        model = self.client.mammoxai_model(raw)
        saliency = raw["models"][model].get("saliency")
        saliency = saliency if isinstance(saliency, dict) else {}
        self.info = ServerInfo(
            url=self.client.url,
            name=str(raw.get("name", "")),
            version=str(raw.get("version", "")),
            model=model,
            class_names=list(raw["models"][model]["labels"]),
            strategies=sorted(raw.get("strategies") or {}),
            trainers=sorted(raw.get("trainers") or {}),
            description=str(raw["models"][model].get("description", "")),
            saliency_methods=[str(name) for name in saliency.get("methods") or {}],
            saliency_method=str(saliency.get("method") or ""),
        )
        self.pending.send_all(self.client)
        return self.info

    def pending_summary(self) -> str:
        """What is kept on disk unsent, for the panel's status line; ``""`` when nothing is.

        E.g. "1 correction unsent kept for this server; 2 corrections wait for http://a:8000 (connect there to
        send)"; corrections an earlier version of the panel saved without a server are counted with the way to
        send them here (:meth:`send_unassigned`), and damaged record files are named.
        """
        parts = []
        kept = len(self.pending.pending())
        if kept:
            parts.append(f"{_corrections(kept)} unsent kept for this server")
        for url, count in self.pending.elsewhere().items():
            parts.append(f"{_corrections(count)} wait{'s' if count == 1 else ''} for {url} (connect there to send)")
        unassigned = len(self.pending.unassigned())
        if unassigned:
            parts.append(
                f"{_corrections(unassigned)} saved by an earlier version of the panel name no server: if made on "
                "this server, press 'Send old corrections here'"
            )
        for path in self.pending.damaged():
            parts.append(f"a damaged correction file was set aside, not sent: {path}")
        return "; ".join(parts)

    def send_unassigned(self) -> tuple[int, list[str]]:
        """Send the corrections an earlier version of the panel saved without naming a server to this server.

        Only on the user's word (see :mod:`MammoXAILib.corrections`): they become this server's and stay kept
        until it accepts them. Returns how many were taken over and the image ids sent.
        """
        self._connected()
        adopted = self.pending.adopt_unassigned()
        sent, _ = self.pending.send_all(self.client)
        return adopted, sent

    def _connected(self) -> ServerInfo:
        if self.info is None:
            raise MammoXAIClientError("Not connected: press Connect first", "input")
        return self.info

    # ---------------------------------------------------------------- cases
    def next_case(self, strategy: str = STRATEGIES[0]) -> Case | None:
        """Download the next image the server's ``strategy`` picks; ``None`` when every image is labelled.

        A strategy the server does not offer falls back to the next of :data:`STRATEGIES` it does offer, and
        the case says so in its ``note``.
        """
        info = self._connected()
        offered = [name for name in (strategy, *STRATEGIES) if name in info.strategies]
        if not offered:
            raise MammoXAIClientError(
                f"The server offers no case selection strategy of {list(STRATEGIES)} (it has {info.strategies}): "
                "open an image from the datastore instead",
                "input",
            )
        used = offered[0]
        sample = self.client.next_sample(used)
        if not sample.get("id"):
            return None
        note = "" if used == strategy else f"the server has no {strategy!r} strategy; used {used!r}"
        return self.open_case(sample["id"], strategy=used, note=note)

    def open_case(self, image_id: str, strategy: str = "", note: str = "") -> Case:
        """Download one datastore image by id."""
        path = self.client.download_image(image_id, os.path.join(self.work_folder, "images"))
        return Case(image_id, path, strategy, note)

    # ---------------------------------------------------------------- prediction
    def run(self, image_id: str, saliency_method: str | None = None) -> InferenceOutcome:
        """Infer ``image_id`` on the server; the heatmap is checked to lie on the image's grid.

        A ``saliency_method`` the server does not advertise for its model grid is refused before the request.
        """
        info = self._connected()
        if saliency_method and info.saliency_methods and saliency_method not in info.saliency_methods:
            offered = ", ".join(info.saliency_methods)
            raise MammoXAIClientError(
                f"The server cannot explain with {saliency_method!r} on its model grid: choose one of {offered}",
                "input",
            )
        params = {"saliency": {"method": saliency_method}} if saliency_method else {}
        result = self.client.infer(info.model, image_id, os.path.join(self.work_folder, "heatmaps"), params)
        view = parse_prediction(result.prediction)
        notes = []
        if saliency_method and view.saliency_method != saliency_method:
            notes.append(f"the server explained with {view.saliency_method!r} (asked for {saliency_method!r})")
        if result.heatmap_path is None:
            notes.append("the server sent no heatmap for this image: only the scores are shown")
        else:
            check_heatmap(result.heatmap_path, view.image_shape, view.spacing_mm)
        return InferenceOutcome(image_id, view, result.heatmap_path, notes)

    # ---------------------------------------------------------------- correction
    def make_label(
        self,
        class_name: str,
        birads: str | None = None,
        lesions: Sequence[dict[str, Any]] = (),
        image_shape: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """The label JSON of one correction, checked as far as the server would check it."""
        info = self._connected()
        if class_name not in info.class_names:
            raise MammoXAIClientError(f"Choose a class ({', '.join(info.class_names)}) before saving", "input")
        if birads and birads not in BIRADS:
            raise MammoXAIClientError(f"BI-RADS {birads!r} is not one of {', '.join(BIRADS)}", "input")
        label: dict[str, Any] = {"class": class_name}
        if birads:
            label["birads"] = birads
        if lesions:
            label["lesions"] = [dict(lesion) for lesion in lesions]
            if image_shape is not None:
                _check_lesions(label["lesions"], image_shape)
        label["annotator"] = self.annotator
        label["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return label

    def submit(self, image_id: str, label: dict[str, Any]) -> dict[str, Any]:
        """Save ``label`` as the final label of ``image_id`` (``PUT /datastore/label?tag=final``).

        The correction is on disk before it is sent; when sending fails it stays there and the error says so. Once
        the server accepted it, the corrections kept for this server from earlier attempts are sent too: the server
        is back.
        """
        try:
            answer = self.pending.send(self.client, image_id, label, tag="final")
        except MammoXAIClientError as error:
            message = (
                f"{error.message}. The correction of {image_id} is kept and will be sent to {self.client.url} when "
                "you connect to it again or save another correction there"
            )
            raise MammoXAIClientError(message, error.kind, error.status) from error
        self.pending.send_all(self.client)
        return answer

    def read_back(self, image_id: str) -> dict[str, Any]:
        """The final label the server holds for ``image_id``."""
        return self.client.get_label(image_id, tag="final")

    # ---------------------------------------------------------------- training
    def start_training(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start training the served model on the final labels."""
        info = self._connected()
        if not info.trainers:
            raise MammoXAIClientError("This server offers no training: start it with a trainer configured", "input")
        return self.client.train_start(_trained_model(info), params)

    def training_status(self) -> TrainingStatus:
        """One line for the panel, e.g. "training RUNNING (started 2024-05-01 09:30:12)", "no training has run",
        for a failed run "training ERROR (started …): <the run's error>", or for a run that left corrections out
        "training DONE (started …); 1 correction left out: image 'x' (<why>)"; and whether to poll again.

        A status that cannot be read is a line too ("training status unknown: <why>"): a server down or slow for a
        moment keeps the panel polling, as the run goes on without it.
        """
        try:
            status = self.client.train_status()
        except MammoXAIClientError as error:
            ended = error.kind not in MammoXAIClientError.TRANSIENT_KINDS
            return TrainingStatus(f"training status unknown: {error.message}", ended)
        if not status:
            return TrainingStatus("no training has run", True)
        state = str(status.get("status", "unknown"))
        started = str(status.get("start_ts", ""))
        line = f"training {state}" + (f" (started {started})" if started else "")
        if state == "DONE":
            left_out = self._left_out()
            line = f"{line}; {left_out}" if left_out else line
        reason = _failure_reason(status.get("details")) if state == "ERROR" else ""
        return TrainingStatus(f"{line}: {reason}" if reason else line, state in FINAL_STATES)

    def _left_out(self) -> str:
        """The corrections the last run left out, e.g. "1 correction left out: image 'x' (<why>)"; "" for none.

        A run trains on the other corrections when one's image can no longer be used (its file replaced after it was
        labelled), and names it only in its log and in ``train_stats`` of ``/info/``: the panel says so, or the
        radiologist would take the correction as learnt and never fix it.
        """
        try:
            stats = self.client.info().get("train_stats")
        except MammoXAIClientError as error:
            return f"corrections left out unknown: {error.message}"
        stats = stats.get(_trained_model(self._connected())) if isinstance(stats, dict) else None
        left_out = stats.get("left_out") if isinstance(stats, dict) else None
        if not isinstance(left_out, dict) or not left_out:
            return ""
        images = ", ".join(f"image {str(image_id)!r} ({reason})" for image_id, reason in left_out.items())
        return f"{_corrections(len(left_out))} left out: {images}"

    def stop_training(self) -> dict[str, Any]:
        return self.client.train_stop()


def _corrections(count: int) -> str:
    return f"{count} correction{'s' if count != 1 else ''}"


def _trained_model(info: ServerInfo) -> str:
    """The model the panel trains: the served MammoXAI model when the server trains it, else its first trainer."""
    return info.trainers[0] if info.trainers and info.model not in info.trainers else info.model


def _failure_reason(details: Any) -> str:
    """The error that ended a run, from the last lines of its output MONAI Label keeps (``details``).

    The server's trainer ends a run that fails on a user's mistake with that error alone; anything else ends with
    Python's last traceback line. A :class:`MammoXAIError`'s message is shown as it is (it names the input and the
    fix), another error with its type; without an error line, the last line.
    """
    lines = [str(line).strip() for line in details or [] if str(line).strip()] if isinstance(details, list) else []
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            name, message = match.groups()
            return message if name == "MammoXAIError" else f"{name}: {message}"
    return lines[-1] if lines else ""


def _check_lesions(lesions: list[dict[str, Any]], image_shape: Sequence[int]) -> None:
    rows, columns = image_shape
    for number, lesion in enumerate(lesions, start=1):
        coordinates = lesion.get(lesion.get("type", ""))
        if not coordinates:
            raise MammoXAIClientError(f"Lesion {number} is neither a point nor a box", "input")
        xs, ys = coordinates[0::2], coordinates[1::2]
        if min(xs) < 0 or min(ys) < 0 or max(xs) > columns or max(ys) > rows:
            raise MammoXAIClientError(f"Lesion {number} lies outside the {rows} x {columns} image", "input")
        if lesion["type"] == "box" and not (coordinates[0] < coordinates[2] and coordinates[1] < coordinates[3]):
            raise MammoXAIClientError(f"Lesion box {number} has no area: draw it again", "input")
