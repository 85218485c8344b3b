#!/usr/bin/env python
"""The GPU figures issues 4, 5 and 6 still owe, in stages that each fit one command on a lent GPU machine.

Such a machine is lent for minutes: it starts bare, has no package index, runs one command of at most ten
minutes and gives back at most eight files. Each stage therefore makes its own synthetic studies, runs the
repository's own scripts and bundle configs at the sizes the issues ask for (the commands the model card gives),
and leaves in ``--out`` two files, ``<stage>.log`` (every command, its output and its time) and ``<stage>.tar.gz``
(the stage's reports, plots and tables; no images, no weights), and ``BENCHMARKS.md`` where a stage records
benchmarks. One command may run several stages in the order given, all within one ``--budget``: a stage that ends
early leaves its minutes to the next (three stages leave seven files, within the eight that come back). The step
running when the budget is spent is stopped with the processes it started, so an overrun still leaves the log and
whatever was finished, and the stages after it are not started; the logs' times are what to size the next run by.

Stages (``--list`` prints their commands without running them):

* ``bench`` (#4, #6): ``bench_pretrain.py`` at 512 x 416, batch 16 and 32, AMP off and on; ``bench_saliency.py``
  at full-field size (Grad-CAM 1024 x 832, RELAX 3000 masks, the fast CorRELAX preset on 3000 x 2400);
* ``faithful`` (#6): the faithful CorRELAX preset's seconds per 3000 x 2400 image;
* ``pretrain`` (#4): 400 synthetic patients, ``configs/pretrain.json`` at its defaults (ResNet-18, 512 x 416,
  batch 32, AMP) but for 40 epochs on the non-test patients, with ``display_range`` intensity scaling (which
  kept the thickness, kVp and matching cues that per-breast percentiles divide out, in the model card's CPU
  comparison) and the whole image as field of view (which kept the noise grain the breast crop resizes away),
  evaluated on the test patients and explained by ablation;
* ``saliency`` (#6): the lesion-crop classifier at full resolution, then the fast and faithful CorRELAX presets'
  prediction and correlation maps on one lesion image per evaluation patient (the comparison's intervals are over
  patients, and it needs ten of them for a verdict), compared with a 0.02 margin. The fast preset scores every
  patient's image; the faithful one (over a million masked passes per image) those the budget leaves time for,
  judged by its mean time per image, and the comparison pairs the findings both scored. ``--max-images`` caps both;
* ``strategies`` (#5): ``compare_strategies.py`` at 5 / 25 / 100 % labelled, for the seeds given (``--seeds``) that
  the budget leaves time for (``--max_minutes``: a seed is not started that would end past it).

Sizing, as far as a CPU can tell (measured on 2 cores, the machine has 16). Synthesis is not the cost: 16
patients at 640 rows took 5 s, 4 at 2560 rows 13 s, so each stage's cohort takes about a minute or less there.
The faithful CorRELAX preset is: a 2048 x 1664 lesion grid holds 1,000 to 2,100 views touching the breast
(synthetic images), each given 1,280 masked passes, so about two million passes of the lesion-crop network per image
(0.38 GFLOP per 256 x 256 view against ResNet-18's 4.5; 4 times ResNet-18's views per second on the CPU). At the
issue's 34,000 ResNet-18 views per second on an H100, that is somewhere between 5 and 60 s per image, which is why
the saliency stage's faithful run is bounded by time rather than by a count. The log's times replace these guesses.

On the GPU machine, from the repository root, with the wheels of ``scripts/device_wheels.sh`` carried in
``.whl``::

    python3 scripts/device_figures.py bench faithful pretrain --out "$OUT" --install --budget 9

Here, to check that a stage runs before a machine's minutes are spent on it (CPU, tiny sizes, same commands;
``scripts/device_rehearsal.sh`` does it with the machine's Python stack)::

    python scripts/device_figures.py pretrain --out /tmp/figures --tiny
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_bundle"
WHEELS = REPO / ".whl"
REPORT_SUFFIXES = (".json", ".md", ".csv", ".png", ".log", ".txt")
DATA_FOLDERS = ("cache", "masks")
"""What a stage's archive keeps: reports, tables, plots, logs and the cohorts' CSVs; never images, masks or
weights."""
REPORT_RESERVE_S = 60.0
"""Seconds of the budget a step with a time limit (the faithful saliency evaluation, the strategies comparison)
leaves for writing its report and for the steps after it."""
PRETRAIN_INTENSITY_SCALING = "display_range"
"""How the pretrain stage scales intensities: the scaling that kept thickness, kVp and matching readable in the
model card's CPU comparison."""
PRETRAIN_FIELD_OF_VIEW = "image"
"""What the pretrain stage frames: the whole image, which gave kVp (both seeds) and thickness (one of two) back to
the small network at this stage's 512 x 416 grid in the model card's CPU comparison."""


@dataclass(frozen=True)
class Sizes:
    """Every size a stage uses: the issues' (``FULL``) or a few seconds' worth on a CPU (``TINY``)."""

    patients: int
    synth_size: int
    grid: tuple[int, int] | None  # None: the config's own (512 x 416)
    batch_size: int
    epochs: int
    workers: int
    bench_pretrain: list[str]
    bench_saliency: list[str]
    lesion_patients: int
    lesion_synth_size: int
    lesion_image_size: tuple[int, int] | None  # None: the configs' own (2048 x 1664)
    view_size: int | None  # None: the configs' own (256)
    lesion_epochs: int
    strategy_patients: int
    strategy_synth_size: int
    strategy_epochs: int
    strategy_pretrain_epochs: int


FULL = Sizes(
    patients=400,
    synth_size=640,
    grid=None,
    batch_size=32,
    epochs=40,
    workers=12,
    bench_pretrain=[
        "--patients", "16", "--size", "640", "--image-sizes", "512x416", "--batch-sizes", "16", "32",
        "--amp", "off", "on", "--iterations", "30", "--warmup", "10", "--num-workers", "8",
    ],  # fmt: skip
    bench_saliency=[],  # its defaults are the full-field sizes
    lesion_patients=120,
    lesion_synth_size=2560,
    lesion_image_size=None,
    view_size=None,
    lesion_epochs=15,
    strategy_patients=640,
    strategy_synth_size=384,
    strategy_epochs=30,
    strategy_pretrain_epochs=20,
)

TINY = Sizes(
    patients=12,
    synth_size=160,
    grid=(64, 52),
    batch_size=4,
    epochs=1,
    workers=0,
    bench_pretrain=[
        "--patients", "2", "--size", "128", "--image-sizes", "32x32", "--batch-sizes", "2",
        "--iterations", "1", "--warmup", "1", "--num-workers", "0",
    ],  # fmt: skip
    bench_saliency=[
        "--image-size", "32x32", "--batch-size", "2", "--relax-size", "32x32", "--relax-masks", "4",
        "--chunk-size", "4", "--correlax-size", "256x256", "--correlax-mask-fraction", "0.002",
        "--repeats", "1", "--warmup", "0",
    ],  # fmt: skip
    lesion_patients=16,
    lesion_synth_size=256,
    lesion_image_size=(256, 208),
    view_size=64,
    lesion_epochs=1,
    strategy_patients=24,
    strategy_synth_size=160,
    strategy_epochs=1,
    strategy_pretrain_epochs=1,
)


@dataclass(frozen=True)
class Step:
    """One command of a stage, run from ``cwd``.

    ``minutes_option`` names an option of the command that takes a time limit in minutes: the step is given what is
    left of the stage's budget when it starts, less ``reserve_s`` seconds for the steps after it, so that a command
    which can stop early (``evaluate_saliency.py --max_minutes``) does so and still writes its report.
    """

    name: str
    argv: list[str]
    cwd: Path = REPO
    minutes_option: str | None = None
    reserve_s: float = 0.0

    def command(self, left_s: float) -> list[str]:
        """The command line when ``left_s`` seconds of the budget are left; a time limit is at least 0.1 minutes, so
        that a late step still starts (and scores its first image) rather than being refused its own option."""
        if self.minutes_option is None:
            return self.argv
        return [*self.argv, self.minutes_option, f"{max(left_s - self.reserve_s, 6.0) / 60:.2f}"]


def python(*argv: object) -> list[str]:
    return [sys.executable, *map(str, argv)]


def bundle_run(config: str, **overrides: object) -> list[str]:
    """``python -m monai.bundle run`` of one bundle config, every override as ``monai.bundle`` reads it."""
    argv = python("-m", "monai.bundle", "run", "--config_file", f"configs/{config}.json")
    for key, value in overrides.items():
        argv += [
            f"--{key}",
            value if isinstance(value, str) else repr(list(value) if isinstance(value, tuple) else value),
        ]
    return argv


def synth(out: Path, patients: int, size: int, seed: int, workers: int, prevalence: str | None = None) -> list[str]:
    argv = python("-m", "mammoxai.data.synth", "--out", out, "--patients", patients, "--seed", seed)
    argv += ["--size", str(size), "--workers", str(max(1, workers)), "--quiet"]
    return argv + (["--prevalence", prevalence] if prevalence else [])


def split_manifest(folder: Path) -> list[str]:
    """Writes ``manifest_training.csv`` and ``manifest_test.csv`` beside a synthetic cohort's ``manifest.csv``: the
    test patients are those the synthesizer put in its ``test`` split, whom pretraining must never see."""
    return python("scripts/device_figures.py", "split-manifest", folder)


def write_split_manifests(folder: Path) -> None:
    with (folder / "manifest.csv").open(newline="") as source:
        reader = csv.DictReader(source)
        rows = list(reader)
    for name in ("training", "test"):
        with (folder / f"manifest_{name}.csv").open("w", newline="") as target:
            writer = csv.DictWriter(target, reader.fieldnames)
            writer.writeheader()
            writer.writerows(row for row in rows if (row["split"] == "test") == (name == "test"))


def device_option(tiny: bool) -> list[str]:
    return ["--device", "cpu" if tiny else "cuda"]


def record_option(args: argparse.Namespace) -> list[str]:
    """Benchmarks record into the repository's BENCHMARKS.md, which the stage copies to ``--out``; a tiny check does
    not record, so the committed figures stay as they are."""
    return [] if args.tiny else ["--record"]


def bench_steps(sizes: Sizes, work: Path, args: argparse.Namespace) -> list[Step]:
    record = record_option(args)
    return [
        Step("bench_pretrain", python("scripts/bench_pretrain.py", *sizes.bench_pretrain, *record)),
        Step(
            "bench_saliency",
            python("scripts/bench_saliency.py", *sizes.bench_saliency, "--correlax-presets", "fast", *record),
        ),
    ]


def faithful_steps(sizes: Sizes, work: Path, args: argparse.Namespace) -> list[Step]:
    argv = ["scripts/bench_saliency.py", *sizes.bench_saliency, "--groups", "correlax"]
    argv += ["--correlax-presets", "faithful", *record_option(args)]
    return [Step("bench_saliency_faithful", python(*argv))]


def pretrain_steps(sizes: Sizes, work: Path, args: argparse.Namespace) -> list[Step]:
    studies, models, out = work / "studies", work / "models", work / "pretrain"
    grid = {"image_size": sizes.grid} if sizes.grid else {}
    common = ["--dataset_dir", studies, "--manifest", studies / "manifest_training.csv"]
    common += ["--checkpoint", models / "pretrained.pt", "--cache_dir", out / "cache", "--num_workers", sizes.workers]
    common += device_option(args.tiny)
    return [
        Step("synthesize", synth(studies, sizes.patients, sizes.synth_size, 0, args.cpu_workers)),
        Step("split", split_manifest(studies)),
        Step(
            "pretrain",
            bundle_run(
                "pretrain",
                dataset_dir=str(studies),
                manifest=str(studies / "manifest_training.csv"),
                ckpt_dir=str(models),
                output_dir=str(out),
                cache_dir=str(out / "cache"),
                batch_size=sizes.batch_size,
                epochs=sizes.epochs,
                num_workers=sizes.workers,
                device=device_option(args.tiny)[1],
                intensity_scaling=PRETRAIN_INTENSITY_SCALING,
                field_of_view=PRETRAIN_FIELD_OF_VIEW,
                **grid,
            ),
            BUNDLE,
        ),
        Step(
            "evaluate_pretrain",
            python(
                "scripts/evaluate_pretrain.py",
                *common,
                "--eval_manifest",
                studies / "manifest_test.csv",
                "--output_dir",
                out / "evaluation",
            ),
        ),
        Step(
            "explain_ablation",
            python(
                "scripts/explain_ablation.py",
                *common,
                "--output_dir",
                out / "ablation",
                "--explainer",
                models / "ablation_explainer.pt",
                "--target",
                "xray_system",
            ),
        ),
    ]


def saliency_steps(sizes: Sizes, work: Path, args: argparse.Namespace) -> list[Step]:
    training, evaluation, models = work / "lesion_training", work / "lesion_evaluation", work / "models"
    lesion_sizes = {"image_size": sizes.lesion_image_size} if sizes.lesion_image_size else {}
    if sizes.view_size:
        lesion_sizes["view_size"] = sizes.view_size
    steps = [
        Step(
            "synthesize_training",
            synth(
                training,
                sizes.lesion_patients,
                sizes.lesion_synth_size,
                7,
                args.cpu_workers,
                "normal=0.2,benign=0.3,recalled_benign=0.1,malignant=0.4",
            ),
        ),
        Step(
            "synthesize_evaluation",
            synth(
                evaluation,
                max(4, sizes.lesion_patients // 4),
                sizes.lesion_synth_size,
                11,
                args.cpu_workers,
                "benign=0.4,malignant=0.6",
            ),
        ),
        Step(
            "train_lesion_crops",
            bundle_run(
                "train_lesion_crops",
                dataset_dir=str(training),
                ckpt_dir=str(models),
                output_dir=str(work / "lesion_crops"),
                epochs=sizes.lesion_epochs,
                num_workers=sizes.workers,
                device=device_option(args.tiny)[1],
                **lesion_sizes,
            ),
            BUNDLE,
        ),
    ]
    for preset in ("fast", "faithful"):
        argv = ["scripts/evaluate_saliency.py", "--dataset_dir", evaluation, "--eval_where", "{}"]
        argv += ["--ckpt_dir", models, "--output_dir", work / preset, "--correlax_preset", preset]
        argv += ["--select", repr(["correlax prediction", "correlax correlation"]), "--max_images_per_patient", "1"]
        argv += ["--max_images", args.max_images] if args.max_images else []
        argv += ["--deletion_steps", "0", "--overlays", "2", *device_option(args.tiny)]
        # the randomisation check runs every map twice: the fast preset's, not the faithful one's scarce minutes
        argv += ["--sanity_images", "2" if preset == "fast" and not args.tiny else "0"]
        if args.tiny:  # views side by side: a faithful preset's minute, not its hour
            argv += ["--lesion_image_size", repr(list(sizes.lesion_image_size)), "--view_size", sizes.view_size]
            argv += ["--correlax_stride", sizes.view_size]
        # the faithful preset scores the images the budget leaves time for, and pairs them with the fast run's
        limit = {"minutes_option": "--max_minutes", "reserve_s": REPORT_RESERVE_S} if preset == "faithful" else {}
        steps.append(Step(f"evaluate_saliency_{preset}", python(*argv), **limit))
    reports = [work / preset / "saliency_evaluation" / "report.json" for preset in ("fast", "faithful")]
    compare = ["scripts/compare_saliency.py", "--reports", *reports, "--margin", "0.02", "--out", work / "comparison"]
    compare += ["--methods", "correlax prediction", "correlax correlation"]
    return [*steps, Step("compare_saliency", python(*compare))]


def strategies_steps(sizes: Sizes, work: Path, args: argparse.Namespace) -> list[Step]:
    studies = work / "studies"
    prevalence = "normal=0.3,benign=0.15,recalled_benign=0.1,malignant=0.45"
    argv = ["scripts/compare_strategies.py", "--dataset_dir", studies, "--out", work / "strategies"]
    argv += ["--fractions", "0.05", "0.25", "1.0", "--strategies", "scratch", "pretrained", "pretrained_frozen"]
    argv += ["--pretrain_epochs", sizes.strategy_pretrain_epochs, "--epochs", sizes.strategy_epochs]
    argv += ["--num_workers", sizes.workers, *device_option(args.tiny), "--seeds", *args.seeds]
    if args.tiny:
        argv += ["--image_size", "64", "52", "--n_bootstrap", "20"]
    return [
        Step(
            "synthesize",
            synth(studies, sizes.strategy_patients, sizes.strategy_synth_size, 2, args.cpu_workers, prevalence),
        ),
        Step("compare_strategies", python(*argv), minutes_option="--max_minutes", reserve_s=REPORT_RESERVE_S),
    ]


STAGES: dict[str, Callable[[Sizes, Path, argparse.Namespace], list[Step]]] = {
    "bench": bench_steps,
    "faithful": faithful_steps,
    "pretrain": pretrain_steps,
    "saliency": saliency_steps,
    "strategies": strategies_steps,
}


def install_wheels(target: Path) -> None:
    """Installs the carried wheels into the folder ``target`` (which the steps put on ``PYTHONPATH``), without their
    dependencies: nothing the machine holds is replaced, and nothing is written where the machine's Python lives,
    which may not be writable."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"error: no wheels in {WHEELS}: run scripts/device_wheels.sh here and carry .whl")
    this_python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    other = sorted({tag for wheel in wheels for tag in re.findall(r"-(cp3\d+)-", wheel.name)} - {this_python})
    if other:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise SystemExit(
            f"error: the wheels in {WHEELS} are built for {', '.join(other)}, this Python is {this_python}: run "
            f"scripts/device_wheels.sh {version} here and carry .whl again"
        )
    pip = python("-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--disable-pip-version-check")
    subprocess.run([*pip, "--upgrade", "--target", str(target), *map(str, wheels)], check=True)


def run_steps(steps: list[Step], log_path: Path, budget_s: float, site: Path | None = None) -> bool:
    """Runs the steps in order until one fails or the budget is spent; True when all of them finished. The bundle,
    and ``site`` (the installed wheels) when given, are on the steps' ``PYTHONPATH``."""
    deadline = time.monotonic() + budget_s
    folders = [str(BUNDLE), *([str(site)] if site else []), os.environ.get("PYTHONPATH")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, folders))}
    with log_path.open("a", encoding="utf-8") as log:
        for step in steps:
            left = deadline - time.monotonic()
            argv = step.command(left)
            log.write(f"\n### {step.name} (in {step.cwd.relative_to(REPO)})\n$ {shlex.join(argv)}\n")
            log.flush()
            if left <= 0:
                log.write("not started: the stage's time budget is spent\n")
                return False
            start = time.monotonic()
            # a session of its own: a step that outruns the budget is stopped with its worker processes
            process = subprocess.Popen(
                argv, cwd=step.cwd, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                returncode = process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                stop_session(process)
                log.write(f"\nstopped after {time.monotonic() - start:.0f} s: the stage's time budget is spent\n")
                return False
            except BaseException:  # Ctrl-C or a kill reaches only this process: the step's session would go on
                stop_session(process)
                raise
            finished = f"{step.name}: exit {returncode} after {time.monotonic() - start:.1f} s"
            log.write(f"\n{finished}\n")
            log.flush()
            print(finished, flush=True)
            if returncode != 0:
                return False
    return True


def stop_session(process: subprocess.Popen) -> None:
    """Kill a step and every process it started (its session, see :func:`run_steps`), and reap it."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def pack_reports(work: Path, archive: Path) -> int:
    """Packs the reports under ``work`` into ``archive``; returns how many files it holds."""
    files = [
        path
        for path in sorted(work.rglob("*"))
        if path.is_file()
        and path.suffix in REPORT_SUFFIXES
        and not set(DATA_FOLDERS) & set(path.relative_to(work).parts)
    ]
    with tarfile.open(archive, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(work)))
    return len(files)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "stages", nargs="+", choices=list(STAGES), metavar="stage", help=f"one or more of {', '.join(STAGES)}"
    )
    parser.add_argument("--out", type=Path, required=True, help="where the logs, the archives and BENCHMARKS.md go")
    parser.add_argument(
        "--work", type=Path, help="working folder, a subfolder per stage (default: <out>_work beside --out)"
    )
    parser.add_argument(
        "--budget", type=float, default=9.0, help="minutes for all the stages, run in the order given (default 9)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU, to check the stages run")
    parser.add_argument("--install", action="store_true", help="install the wheels carried in .whl first")
    parser.add_argument("--list", action="store_true", help="print the stages' commands and run nothing")
    parser.add_argument(
        "--max-images",
        type=int,
        help="lesion images (one per patient) the saliency stage scores at most (default: all the fast preset's, and "
        "the faithful preset's that the budget leaves time for)",
    )
    parser.add_argument("--seeds", nargs="+", default=["0"], help="seeds of the strategies stage")
    parser.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1, help="processes for synthesis")
    return parser


def run_stage(
    stage: str, steps: list[Step], work: Path, out: Path, budget_s: float, tiny: bool, site: Path | None
) -> bool:
    """Runs one stage's steps in ``work`` within ``budget_s`` seconds (with the wheels installed in ``site``),
    leaving ``<stage>.log`` and ``<stage>.tar.gz`` in ``out``; True when every step finished."""
    work.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{stage}.log"
    log_path.write_text(f"stage {stage} ({'tiny, CPU' if tiny else 'full'}), work folder {work}\n")
    with log_path.open("a", encoding="utf-8") as log:
        torch_check = "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
        subprocess.run(python("-c", torch_check), stdout=log, stderr=subprocess.STDOUT)
    finished = run_steps(steps, log_path, budget_s, site)
    count = pack_reports(work, out / f"{stage}.tar.gz")
    print(f"{stage}: {'finished' if finished else 'stopped early (see the log)'}; {count} report files packed")
    return finished


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["split-manifest"]:  # a step of the pretrain stage
        write_split_manifests(Path(arguments[1]))
        return 0
    args = build_parser().parse_args(arguments)
    if args.budget <= 0 or (args.max_images is not None and args.max_images < 1):
        raise SystemExit("error: --budget must be above 0 and --max-images at least 1")
    out = args.out.resolve()
    work = (args.work or out.parent / f"{out.name}_work").resolve()
    sizes = TINY if args.tiny else FULL
    plans = {stage: STAGES[stage](sizes, work / stage, args) for stage in args.stages}  # a stage named twice runs once
    if args.list:
        budget_s = 60 * args.budget  # what the first step would get; a later one gets what is left then
        for stage, steps in plans.items():
            print("\n".join(f"# {stage}: {step.name}\n{shlex.join(step.command(budget_s))}" for step in steps))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    site = work / "site" if args.install else None
    if site:
        install_wheels(site)
    # one budget for all: a stage that finishes early leaves its minutes to the next, one that overruns stops there
    deadline = time.monotonic() + 60 * args.budget
    finished = [
        run_stage(stage, steps, work / stage, out, deadline - time.monotonic(), args.tiny, site)
        for stage, steps in plans.items()
    ]
    if any("--record" in step.argv for steps in plans.values() for step in steps):
        shutil.copyfile(REPO / "BENCHMARKS.md", out / "BENCHMARKS.md")
    return 0 if all(finished) else 1


if __name__ == "__main__":
    sys.exit(main())
