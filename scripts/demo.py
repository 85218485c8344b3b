"""The MammoXAI demo: synthetic studies, demo weights and the MONAI Label server, in one command.

    python scripts/demo.py [--studies DIR] [--patients N] [--size PX] [--bundle DIR] [--log FILE]
                           [--host 127.0.0.1] [--port 8000]

1. writes a synthetic study set (:mod:`mammoxai.data.synth`) to ``.demo/studies`` unless the folder already
   holds images (a synthetic cohort of another size that no weights were trained from is written again):
   200 patients by default, enriched for cancers (:data:`DEMO_PREVALENCE`) so that the demo
   weights learn something (screening prevalence would leave a handful of malignant training images). The studies
   are written into a folder beside it that takes its name only once they are complete, so an interrupted demo
   writes them again rather than serving, or training from, part of a cohort;
2. trains demo weights into ``monai_bundle/models/model.pt`` with the bundle's ``configs/train.json`` unless the
   file exists; training writes into a folder beside it whose ``model.pt`` takes its place only when training
   finished, so an interrupted demo trains again rather than serving the best epoch so far (about six minutes on
   two CPU cores for the default 200 patients, 5 min 42 s in the model card's Metrics; held-out malignant-vs-rest
   AUC 0.6-0.75 between runs). They are trained on synthetic phantoms and are NOT for clinical use;
3. starts ``monailabel start_server --app apps/mammography`` and prints what to open and how to connect
   (browser, 3D Slicer, Python client, curl). Ctrl-C, or ``kill``, stops the demo cleanly at any step, with the
   training or server it started (:func:`stop_child`), and exits with status 0.

Nothing is downloaded. :class:`ServerProcess` is also what the app's tests use to start the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from mammoxai.cli import USER_ERROR_PREFIX
from mammoxai.data.manifest import find_images, read_table
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError, check_output_path

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "apps" / "mammography"
BUNDLE_DIR = REPO / "monai_bundle"
DEMO_DIR = REPO / ".demo"
#: study outcome shares of the demo's synthetic studies: enriched, as a training set for a rare class is
DEMO_PREVALENCE = {"normal": 0.3, "benign": 0.15, "recalled_benign": 0.1, "malignant": 0.45}
#: how a bundle run stopped by a user error gives its message: one line (mammoxai.cli.brief_user_errors), or with
#: MAMMOXAI_TRACEBACK=1 the last line of the traceback
USER_ERROR_LINES = (USER_ERROR_PREFIX, f"{MammoXAIError.__module__}.{MammoXAIError.__qualname__}: ")
#: seconds a child is given to stop after each of SIGINT and SIGTERM before it is killed
STOP_TIMEOUT_S = 30.0


def stop_child(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """Stop a child the way Ctrl-C would, and make sure it is gone: SIGINT, then SIGTERM, then SIGKILL.

    Each signal is given ``timeout`` seconds. SIGINT comes first since it is what the children (uvicorn, a bundle
    run) shut down cleanly on; only one is sent, since a second makes uvicorn force-quit. A child that already
    exited, e.g. one that got the terminal's Ctrl-C itself, is left as it is. Returns its exit status.
    """
    for stop in (signal.SIGINT, signal.SIGTERM):
        if process.poll() is not None:
            return process.returncode
        process.send_signal(stop)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    return process.wait()


class ServerProcess:
    """``monailabel start_server`` for the MammoXAI app, run as a child process and stopped like Ctrl-C stops it.

    The server gets its own process group, so a Ctrl-C in the terminal reaches only the parent, which then sends
    the server exactly one SIGINT: uvicorn's graceful shutdown (a second SIGINT would make it force-quit).

    Args:
        studies: the folder of mammograms the datastore serves, or a DICOMweb root URL (``http://...``), which
            is passed on unchanged (a URL is not a path: ``Path`` would fold its ``//``).
        host, port: where the server listens.
        conf: app options passed as ``--conf key value`` (``bundle``, ``device``).
        log: file receiving the server's stdout and stderr.
        env: environment of the server process (default: this process's).

    Example:
        with ServerProcess("studies", port=8000, log=Path("server.log")) as server:
            print(server.url)
    """

    def __init__(
        self,
        studies: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 8000,
        conf: dict[str, str] | None = None,
        log: str | os.PathLike = DEMO_DIR / "server.log",
        env: dict[str, str] | None = None,
    ) -> None:
        self.studies = studies if is_url(studies) else Path(studies)
        self.host = host
        self.port = port
        self.conf = dict(conf or {})
        self.log = Path(log)
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR)]
        command += ["--studies", str(self.studies), "--host", self.host, "--port", str(self.port)]
        for key, value in self.conf.items():
            command += ["--conf", key, str(value)]
        return command

    def start(self, timeout: float = 300.0) -> ServerProcess:
        """Start the server and wait until ``GET /info/`` answers; raise ``RuntimeError`` with the log if it dies.

        Raises:
            MammoXAIError: something already listens on the port.
        """
        check_port_free(self.host, self.port)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.log.parent,  # MONAI Label reads a .env file from its working folder: keep it ours
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/info/", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the server with :func:`stop_child`; ``None`` if it was never started."""
        return None if self.process is None else stop_child(self.process, timeout)

    def wait(self) -> int:
        assert self.process is not None, "start() the server first"
        return self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def is_url(studies: str | os.PathLike) -> bool:
    """Whether ``studies`` names a DICOMweb server rather than a folder."""
    return isinstance(studies, str) and studies.startswith(("http://", "https://"))


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``.

    Raises:
        MammoXAIError: ``host`` is not a name or address that can be looked up (``socket.gaierror``) or reached.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            return probe.connect_ex((host, port)) == 0
        except OSError as error:
            reason = error.strerror or str(error)
            fix = "give an address such as 127.0.0.1"
            raise MammoXAIError(f"--host {host}", f"cannot be used ({reason})", fix) from None


def check_port_free(host: str, port: int) -> None:
    """Refuse a port the server cannot listen on: out of range, or one something already listens on (an earlier
    demo, another server). Port 0 is refused too: the server would pick a port the demo does not know to poll.

    Raises:
        MammoXAIError: the port is out of range or in use, or ``host`` cannot be looked up.
    """
    if not 1 <= port <= 65535:
        raise MammoXAIError(f"--port {port}", "is not a port number", "give a port between 1 and 65535, e.g. 8000")
    if port_in_use(host, port):
        fix = "pass another --port, or stop what listens there"
        raise MammoXAIError(f"--port {port}", f"{host}:{port} is already in use", fix)


def check_paths(studies: Path, bundle: Path, log: Path) -> None:
    """Refuse paths the demo cannot use before minutes of synthesising and training, not at the step that needs them.

    Raises:
        MammoXAIError: ``studies`` (or a folder above it) is a file, ``bundle`` has no ``configs/inference.json``,
            or ``log`` is a folder or lies under a file.
    """
    check_output_path(studies, "--studies", "give a folder of mammograms, or a new folder for synthetic ones")
    check_output_path(log, "--log", "give a file for the server log", folder=False)
    if not (bundle / "configs" / "inference.json").is_file():
        problem = "is not a MammoXAI bundle (it has no configs/inference.json)" if bundle.exists() else "does not exist"
        fix = f"pass a bundle folder such as {BUNDLE_DIR}, or leave --bundle out"
        raise MammoXAIError(f"--bundle {bundle}", problem, fix)


def ensure_studies(studies: Path, patients: int, size: int, seed: int = 0, untrained: bool = False) -> None:
    """Write a synthetic study set into ``studies`` unless it already holds images.

    With ``untrained`` (no weights exist yet, so the studies are about to be trained on), a synthetic cohort of
    another number of patients than asked for is written again: it is what an earlier demo left when its training
    failed (``--patients 3`` holds too few patients to train on), and reusing it would fail the same way.
    """
    if studies.is_dir() and next(find_images(studies, exclude=["masks/*"]), None) is not None:
        earlier = synthetic_patients(studies)
        if not untrained or earlier in (None, patients):
            print(f"studies: {studies} (existing)")
            return
        print(
            f"studies: {studies} holds an untrained synthetic cohort of {earlier} patients, not {patients}: rewriting it"
        )
    elif studies.is_dir() and any(studies.iterdir()):
        problem = "holds no mammograms, but other files the synthetic studies would be mixed with"
        raise MammoXAIError(f"--studies {studies}", problem, "give an empty or new folder, or a folder of mammograms")
    else:
        print(f"studies: writing {patients} synthetic patients ({size} rows) to {studies} ...")

    def write(partial: Path) -> Path:
        synthesize(partial, patients, seed, size=size, prevalence=DEMO_PREVALENCE)
        return partial

    write_in_place(studies, write)


def write_in_place(target: Path, write: Callable[[Path], Path]) -> None:
    """Have ``write`` fill a new folder beside ``target``, and only once it returns, move what it names there.

    An interrupted or failed ``write`` leaves ``target`` as it was and the partial folder deleted, so the next demo
    does not take part of a cohort, or a training's best epoch so far, for the finished thing. A ``target`` folder
    is replaced whole: it is the demo's own output (an empty folder, or a synthetic cohort it wrote).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        finished = write(partial)
        if target.is_dir():
            shutil.rmtree(target)
        finished.replace(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def synthetic_patients(studies: Path) -> int | None:
    """The number of patients of the synthetic cohort in ``studies`` (its manifest and finding CSV, as
    :func:`~mammoxai.data.synth.synthesize` writes them); ``None`` for a folder that is not one."""
    if not (studies / "finding_annotations.csv").is_file():
        return None
    try:
        return len({row["patient_id"] for row in read_table(studies / "manifest.csv", ["patient_id"])})
    except MammoXAIError:  # no manifest, or not the generator's
        return None


def ensure_weights(bundle: Path, studies: Path) -> None:
    """Train demo weights into ``<bundle>/models/model.pt`` unless they exist (synthetic phantoms: not clinical)."""
    checkpoint = bundle / "models" / "model.pt"
    if checkpoint.is_file():
        print(f"weights: {checkpoint} (existing)")
        return
    if not (studies / "manifest.csv").is_file():
        raise RuntimeError(
            f"there are no weights at {checkpoint}, and {studies} has no manifest.csv with labels to train them from: "
            "run the demo once without --studies, or put trained weights there"
        )
    print(f"weights: training demo weights into {checkpoint} on the synthetic phantoms (NOT for clinical use) ...")
    write_in_place(checkpoint, lambda partial: train(bundle, studies, partial))


def train(bundle: Path, studies: Path, ckpt_dir: Path) -> Path:
    """Train the bundle on ``studies`` with its checkpoints in ``ckpt_dir``; return the finished ``model.pt``.

    Raises:
        RuntimeError: training failed, or finished without writing ``model.pt``.
    """
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.json"]
    command += ["--dataset_dir", str(studies), "--ckpt_dir", str(ckpt_dir)]
    run_showing_user_error(command, cwd=bundle, what="training")
    if not (ckpt_dir / "model.pt").is_file():
        raise RuntimeError(f"training finished but wrote no model.pt into {ckpt_dir}; see the output above")
    return ckpt_dir / "model.pt"


def run_showing_user_error(command: Sequence[str], cwd: Path, what: str) -> None:
    """Run ``command``, passing its stderr through; if it fails, raise with its :class:`MammoXAIError` message.

    A bundle run stopped by a user error prints it as one line among the run's log (or, with
    ``MAMMOXAI_TRACEBACK=1``, as a line of a long chained traceback); the demo's own last line repeats it. If the
    demo is interrupted meanwhile (Ctrl-C, or ``kill``, which the demo turns into one), the command is stopped
    with :func:`stop_child` before the interruption goes on: left running, it would go on training unseen.

    Raises:
        RuntimeError: the command exited with a non-zero status; the message is its last ``MammoXAIError`` line,
            or its exit status if it printed none.
    """
    user_error = None
    with subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True, errors="replace") as process:
        try:
            for line in process.stderr:
                sys.stderr.write(line)
                prefix = next((prefix for prefix in USER_ERROR_LINES if line.startswith(prefix)), None)
                if prefix is not None:
                    user_error = line[len(prefix) :].strip()
        except BaseException:
            stop_child(process)
            raise
    if process.returncode != 0:
        raise RuntimeError(f"{what} stopped: {user_error or f'exit status {process.returncode}, see the output above'}")


def first_image_id(server_url: str) -> str | None:
    with urllib.request.urlopen(f"{server_url}/datastore/?output=all", timeout=10) as response:
        objects = json.load(response).get("objects", {})
    return next(iter(sorted(objects)), None)


def banner(server_url: str, image_id: str | None, log: Path) -> str:
    image_id = image_id or "<image id>"
    return f"""
MammoXAI is serving on {server_url}   (demo weights: synthetic phantoms, NOT for clinical use)

  Open          {server_url}/info/       the model, its class names, the datastore
                {server_url}/            API documentation (the page loads its viewer from a CDN)
  3D Slicer     MammoXAI module, server URL {server_url}
  Python        from monailabel.client import MONAILabelClient
                client = MONAILabelClient({server_url!r})
                heatmap_nrrd, prediction = client.infer("mammoxai", {image_id!r}, {{}})
  curl          curl -X POST "{server_url}/infer/mammoxai?image={image_id}&output=json"
  Server log    {log}

Press Ctrl-C to stop.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--studies", type=Path, default=DEMO_DIR / "studies", help="folder of mammograms (default: %(default)s)"
    )
    parser.add_argument("--patients", type=int, default=200, help="synthetic patients to write when --studies is empty")
    parser.add_argument(
        "--size", type=int, default=512, help="rows of the largest synthetic images (default: %(default)s)"
    )
    parser.add_argument(
        "--bundle", type=Path, default=BUNDLE_DIR, help="the MammoXAI bundle to serve (default: %(default)s)"
    )
    parser.add_argument(
        "--log", type=Path, default=DEMO_DIR / "server.log", help="server log file (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    return parser.parse_args(argv)


def stop_on_termination_signals() -> None:
    """Make ``kill``, a closed terminal and a service manager stop the demo the way Ctrl-C does.

    The server runs in its own session, out of reach of signals sent to the demo; without this, SIGTERM or SIGHUP
    would end the demo at once and leave the server holding its port.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for termination in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(termination, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_termination_signals()
    studies, bundle = args.studies.resolve(), args.bundle.resolve()
    server = ServerProcess(studies, host=args.host, port=args.port, conf={"bundle": str(bundle)}, log=args.log)
    try:
        check_port_free(args.host, args.port)  # before minutes of synthesising and training, not after
        check_paths(studies, bundle, server.log)
        ensure_studies(studies, args.patients, args.size, untrained=not (bundle / "models" / "model.pt").is_file())
        ensure_weights(bundle, studies)
        print(f"server: starting on {server.url} (log: {server.log}) ...")
        server.start()
        print(banner(server.url, first_image_id(server.url), server.log), flush=True)
        status = server.wait()
        print(f"demo: the server stopped by itself with status {status}; see {server.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        server.stop()
        print("stopped")
        return 0
    except (MammoXAIError, RuntimeError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
