"""A simulated clinician runs the MONAI Label active-learning loop against the real server, round after round.

    python scripts/simulate_clinician.py --out .simulation [--patients 24] [--size 256] [--image-size 128 104]
        [--rounds 5] [--per-round 8] [--epochs 3] [--batch-size 8] [--accept not_worse] [--studies DIR]
        [--strategies uncertainty random] [--seed 0] [--overwrite]

For each strategy the script writes a fresh copy of the bundle (same random-initialised weights for every strategy)
and uses a synthetic study set (:mod:`mammoxai.data.synth`): ``--studies`` names one already written (e.g. enriched
for cancers with ``--prevalence``), otherwise ``--patients`` are written into ``<out>/synth``. The patients of its
``test`` split are the held-out set, never put in the datastore; the others are the pool the server proposes from.
It starts ``monailabel start_server`` on 127.0.0.1 and, each round, asks ``POST /activelearning/<strategy>`` for the
next case, runs ``/infer`` on it, corrects it with the true class from ``manifest.csv`` (saved with tag ``final``)
until the round's budget is spent, then trains (``POST /train/mammoxai``, waiting on ``GET /train/``) and checks
that ``/infer`` serves the new weights. After every round it reports the held-out AUC of the served weights (macro
one-vs-rest, :func:`mammoxai.metrics.roc_auc`, with a 95 % patient-bootstrap interval). Results go to
``<out>/results.csv`` and ``<out>/curve.png``; nothing is downloaded.

The strategies are the app's (:data:`STRATEGIES`), each named once. An ``--out`` that holds an earlier
simulation's results, strategy folders or synthetic studies is refused before anything is written, unless
``--overwrite``: a rerun would otherwise replace hours of results without a word. With it, the script deletes
only what it writes itself: ``results.csv``, ``curve.png``, the folders of the strategies it runs (and the files
of a synthetic cohort in ``<out>/synth``, written again with the arguments given); anything else in ``--out`` is
left alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import requests
import torch
from monai.bundle import ConfigParser

from mammoxai.cli import exit_status
from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import synthesize
from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.metrics import ConfidenceInterval, bootstrap_ci, roc_auc
from mammoxai.training.corrections import ACCEPT_POLICIES

REPO = Path(__file__).resolve().parents[1]
MODEL = "mammoxai"
STRATEGIES = ("uncertainty", "random", "first")
"""The active-learning strategies the app offers (``POST /activelearning/<strategy>``, listed by ``GET /info/``);
the script names its folders after them, so a name is never a path."""


# demo.py beside this file, one module under one name (``demo``) however this file is loaded: as a script its folder
# is already on sys.path, loaded by path (the tests) it is added
sys.path.append(str(Path(__file__).resolve().parent))
import demo  # noqa: E402


@dataclass
class RoundResult:
    strategy: str
    round: int
    labels: int
    auc: ConfidenceInterval
    accepted: bool | None
    """whether the round's new weights were served; None when the server refused to train (nothing to judge)"""
    seconds: float

    def weights(self) -> str:
        return {True: "served", False: "rejected", None: "not trained"}[self.accepted]


def network_def(configs: Path) -> torch.nn.Module:
    """The served network of the bundle configs in ``configs`` (``inference.json``'s ``network_def``)."""
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    return parser.get_parsed_content("network_def")


def check_image_size(image_size: Sequence[int]) -> None:
    """Refuse a model grid the bundle's network cannot run on, before minutes of synthesis: its downsampling would
    leave less than a pixel, and the first forward pass (round 0's AUC) would fail with PyTorch's traceback.

    Raises:
        MammoXAIError: a forward pass of one blank image on ``image_size`` fails.
    """
    network = network_def(REPO / "monai_bundle" / "configs").eval()
    try:
        with torch.no_grad():
            network(torch.zeros(1, 1, *image_size))
    except RuntimeError as error:
        problem = "is too small for the network's downsampling"
        raise MammoXAIError(f"--image-size {' '.join(map(str, image_size))}", problem, "use e.g. 128 104") from error


def make_bundle(folder: Path, image_size: Sequence[int], seed: int) -> Path:
    """A copy of the repository bundle's configs on ``image_size``, with random-initialised weights (``seed``)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO / "monai_bundle" / "configs", folder / "configs")
    for name in ("inference.json", "train.json"):
        path = folder / "configs" / name
        config = json.loads(path.read_text())
        config["image_size"] = list(image_size)
        path.write_text(json.dumps(config, indent=4))
    torch.manual_seed(seed)
    (folder / "models").mkdir(parents=True)
    torch.save(network_def(folder / "configs").state_dict(), folder / "models" / "model.pt")
    return folder


def split_studies(source: Path, pool: Path) -> tuple[dict[str, str], list[dict]]:
    """Copy the non-test images of a synth folder into ``pool``; return their true classes and the test records.

    Raises:
        MammoXAIError: the manifest has no ``test`` patients (no held-out AUC to report) or no others (nothing
            to propose): checked before a file is copied.
    """
    records = [
        {**record, "class": {"recalled_benign": "benign"}.get(record["case_label"], record["case_label"])}
        for record in read_manifest(source / "manifest.csv")
    ]
    held_out = [record for record in records if record.get("split") == "test"]
    pool_records = [record for record in records if record.get("split") != "test"]
    for name, part in (("held-out test split", held_out), ("pool (the patients outside the test split)", pool_records)):
        if not part:
            fix = "write more --patients, or pass --studies with patients in and outside the test split"
            raise MammoXAIError(source / "manifest.csv", f"has no images in the {name}", fix)
    pool.mkdir(parents=True, exist_ok=True)
    truth = {}
    for record in pool_records:
        path = Path(record["path"])
        shutil.copyfile(path, pool / path.name)
        truth[path.stem] = record["class"]
    return truth, held_out


def held_out_auc(bundle: Path, records: Sequence[dict], class_names: Sequence[str]) -> ConfidenceInterval:
    """Macro one-vs-rest AUC of the bundle's current weights on the held-out records (the served model's forward),
    with a 95 % interval that resamples patients: a held-out set of a few dozen patients moves the AUC by several
    hundredths from one round to the next by chance alone, and the curve must say so."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "cpu"
    predictor = parser.get_parsed_content("predictor")
    probabilities = np.stack([predictor.predict_probabilities(r["path"])[0][0].numpy() for r in records])
    labels = np.array([list(class_names).index(r["class"]) for r in records])
    patients = [r["patient_id"] for r in records]
    return bootstrap_ci(roc_auc, labels, probabilities, n=1000, seed=0, groups=patients)


def label_json(label: str) -> bytes:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"class": label, "annotator": "simulated-clinician", "timestamp": stamp}).encode()


def wait_for_training(url: str, timeout: float = 1800.0) -> dict:
    """The server's last training task once it has ended (done, failed or stopped).

    Raises:
        RuntimeError: the server lists no training task (the request that should have started one failed).
        TimeoutError: the task is still running after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/train/", timeout=30)
        if response.status_code == 404:
            raise RuntimeError(f"the server lists no training task: {response.text}")
        task = response.json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            return task
        time.sleep(1.0)
    raise TimeoutError(f"training did not finish within {timeout:.0f} s")


def run_loop(
    out: Path,
    strategy: str,
    truth: dict[str, str],
    held_out: Sequence[dict],
    pool: Path,
    bundle: Path,
    rounds: int,
    per_round: int,
    train_params: dict,
) -> list[RoundResult]:
    """Run ``rounds`` label-train rounds of ``strategy`` against a server over ``pool``; one result per round."""
    class_names = json.loads((bundle / "configs" / "inference.json").read_text())["class_names"]
    port = _free_port()
    env = {**os.environ, "MONAI_LABEL_SESSION_PATH": str(out / "sessions")}
    server = demo.ServerProcess(
        pool, port=port, conf={"bundle": str(bundle), "device": "cpu"}, log=out / f"server_{strategy}.log", env=env
    )
    results = [RoundResult(strategy, 0, 0, held_out_auc(bundle, held_out, class_names), True, 0.0)]
    print(f"{strategy}: round 0, 0 labels, held-out AUC {results[0].auc.estimate:.3f}", flush=True)
    labelled = 0
    with server:
        url = server.url
        for round_index in range(1, rounds + 1):
            start = time.monotonic()
            for _ in range(per_round):
                proposed = requests.post(f"{url}/activelearning/{strategy}", json={}, timeout=600)
                proposed.raise_for_status()  # a strategy the server lacks must not pass for an exhausted pool
                case = proposed.json()
                if not case.get("id"):
                    break
                image_id = case["id"]
                inferred = requests.post(
                    f"{url}/infer/{MODEL}", params={"image": image_id, "output": "json"}, timeout=600
                )
                inferred.raise_for_status()
                saved = requests.put(
                    f"{url}/datastore/label",
                    params={"image": image_id, "tag": "final"},
                    files={"label": ("label.json", label_json(truth[image_id]))},
                    timeout=60,
                )
                saved.raise_for_status()
                labelled += 1
            before = (bundle / "models" / "model.pt").stat().st_mtime_ns
            started = requests.post(f"{url}/train/{MODEL}", json=train_params, timeout=60)
            accepted = None
            if started.status_code == 422:  # e.g. all corrections so far are of one patient: label more first
                print(f"{strategy}: round {round_index}: not trained: {started.json()['detail']}", flush=True)
            else:
                started.raise_for_status()
                task = wait_for_training(url)
                if task["status"] != "DONE":
                    raise RuntimeError(f"training ended {task['status']}: {list(task.get('details', []))[-5:]}")
                accepted = (bundle / "models" / "model.pt").stat().st_mtime_ns != before
            auc = held_out_auc(bundle, held_out, class_names)
            result = RoundResult(strategy, round_index, labelled, auc, accepted, time.monotonic() - start)
            results.append(result)
            print(
                f"{strategy}: round {round_index}, {labelled} labels, held-out AUC {auc.estimate:.3f} "
                f"({auc.low:.3f}-{auc.high:.3f}), new weights {result.weights()}",
                flush=True,
            )
    return results


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_results(results: Sequence[RoundResult], out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["strategy", "round", "labels", "held_out_auc", "auc_low", "auc_high", "new_weights_served", "seconds"]
        )
        for r in results:
            auc = [f"{value:.4f}" for value in (r.auc.estimate, r.auc.low, r.auc.high)]
            served = "" if r.accepted is None else r.accepted  # empty: not trained, so neither served nor rejected
            writer.writerow([r.strategy, r.round, r.labels, *auc, served, f"{r.seconds:.1f}"])
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(5, 3.5))
    for strategy in dict.fromkeys(r.strategy for r in results):
        mine = [r for r in results if r.strategy == strategy]
        labels = [r.labels for r in mine]
        line = axis.plot(labels, [r.auc.estimate for r in mine], marker="o", label=strategy)[0]
        low, high = [r.auc.low for r in mine], [r.auc.high for r in mine]
        axis.fill_between(labels, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    axis.set_xlabel("corrected images (final labels)")
    axis.set_ylabel("held-out AUC (macro one-vs-rest, 95 % CI)")
    axis.set_title("Simulated clinician: uncertainty vs random sampling")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "curve.png", dpi=120)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for studies, bundles, logs and results")
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--size", type=int, default=256, help="detector rows of the synthetic images")
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 104], help="model grid (h w)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=8, help="images corrected per round")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per round")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument(
        "--accept",
        choices=list(ACCEPT_POLICIES),
        default="not_worse",
        help="the train requests' policy for new weights",
    )
    parser.add_argument(
        "--studies", type=Path, help="a folder written by mammoxai.data.synth to use instead of writing one"
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=["uncertainty", "random"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results, curve, strategy folders and synthetic studies of an earlier run in --out",
    )
    args = parser.parse_args(argv)
    counts = {"--patients": args.patients, "--image-size": min(args.image_size), "--rounds": args.rounds,
              "--per-round": args.per_round, "--epochs": args.epochs, "--batch-size": args.batch_size}  # fmt: skip
    for name, value in counts.items():
        if value < 1:
            parser.error(f"{name} must be at least 1")
    repeated = sorted({name for name in args.strategies if args.strategies.count(name) > 1})
    if repeated:
        parser.error(f"--strategies names {', '.join(repeated)} more than once")
    return args


def claim_out(out: Path, studies: Path | None, strategies: Sequence[str], overwrite: bool) -> None:
    """Refuse an ``out`` holding what this run would replace, unless ``overwrite``: checked before anything is
    written, so a repeated command stops at once instead of deleting the earlier run's results.

    Raises:
        MammoXAIError: ``out`` is or lies under a file, or it holds ``results.csv``, ``curve.png``, the folder of
            one of ``strategies`` or (without ``studies``) a synthetic cohort in ``synth/``, and not ``overwrite``.
    """
    check_output_path(out, "--out", "give a folder for the simulation")
    ours = ["results.csv", "curve.png", *strategies, *([] if studies else ["synth/manifest.csv"])]
    earlier = [name for name in ours if (out / name).exists()]
    if earlier and not overwrite:
        problem = f"holds {', '.join(earlier)} of an earlier simulation"
        raise MammoXAIError(f"--out {out}", problem, "pass --overwrite to replace them, or give another --out")


def simulate(args: argparse.Namespace) -> None:
    """The simulation the command line asks for; every path is made absolute first, since the server runs in
    another working folder (its strategy folder) and would read a relative bundle path from there."""
    out = args.out.resolve()
    studies = args.studies.resolve() if args.studies is not None else None
    if studies is not None and not (studies / "manifest.csv").is_file():
        raise MammoXAIError(
            f"--studies {studies}", "has no manifest.csv", "write one with python -m mammoxai.data.synth"
        )
    claim_out(out, studies, args.strategies, args.overwrite)
    check_image_size(args.image_size)
    out.mkdir(parents=True, exist_ok=True)
    source = studies or out / "synth"
    if studies is None:
        synthesize(source, patients=args.patients, seed=args.seed, size=args.size, overwrite=args.overwrite)
    train_params = {"epochs": args.epochs, "batch_size": args.batch_size, "accept": args.accept, "num_workers": 0}
    results: list[RoundResult] = []
    for strategy in args.strategies:
        run = out / strategy
        shutil.rmtree(run, ignore_errors=True)  # an earlier run's, and only with --overwrite (claim_out)
        truth, held_out = split_studies(source, run / "studies")
        bundle = make_bundle(run / "bundle", args.image_size, args.seed)
        results += run_loop(
            run, strategy, truth, held_out, run / "studies", bundle, args.rounds, args.per_round, train_params
        )
    write_results(results, out)
    print(f"results: {out / 'results.csv'}, curve: {out / 'curve.png'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: simulate(args))


if __name__ == "__main__":
    sys.exit(main())
