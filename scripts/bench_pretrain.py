#!/usr/bin/env python
"""Throughput of metadata pretraining: training images per second, and how long each step waits for data.

Runs the training loop of the bundle's ``configs/pretrain.json`` itself (the same dataset, study batch sampler,
cache, network, losses, handlers and ``SupervisedTrainer``) for a few iterations per setting, over every
combination of batch size, image size, AMP and channels-last asked for, with the config's ``intensity_scaling`` set
by ``--intensity_scaling`` (every row names it). Per setting it reports

* images per second over the timed iterations (after ``--warmup`` untimed ones: cuDNN autotuning, worker
  start-up and allocator growth are not steady state);
* the data-wait share: the time the trainer was blocked in the DataLoader iterator (between ignite's
  ``GET_BATCH_STARTED`` and ``GET_BATCH_COMPLETED``) over the total. Near zero means loading keeps up with the
  accelerator; a large share means more ``--num_workers`` or a faster disk, not a faster GPU, would help.

The preprocessed-tensor cache is filled before timing, by the readability check pretraining runs before its
first epoch (``load_records`` with the run's grid, ``--num-workers`` processes); that fill rate is reported
separately. AMP is CUDA-only in MONAI's trainer, so on a CPU ``--amp on`` settings are skipped.

A table is printed; nothing else is written unless ``--record`` is given. With it, the run is written with its
command, hardware and load as a section of ``BENCHMARKS.md`` at the repository root (or of the file named by
``--record FILE``): an earlier section of the same hardware and the same settings (every option but
``--device`` and ``--record``, defaults filled in) is replaced, and a run of other settings, such as the reduced
CPU example below, is added beside the figures already there instead of replacing them.

Example (GPU, the figure the model card quotes)::

    python scripts/bench_pretrain.py --patients 24 --size 1024 --image-sizes 512x416 --batch-sizes 16 32 \\
        --amp off on --channels-last off on --num-workers 8 --record

Example (CPU, reduced)::

    python scripts/bench_pretrain.py --patients 4 --size 256 --image-sizes 256x208 --batch-sizes 8 \\
        --channels-last off on --iterations 6 --warmup 2 --num-workers 1
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from mammoxai.benchmarks import add_record_option, command_settings, image_size, record_section
from mammoxai.cli import BUNDLE_ROOT, exit_status
from mammoxai.data.synth import synthesize
from mammoxai.errors import check_output_path
from mammoxai.inference import resolve_device
from mammoxai.io.preprocess import INTENSITY_SCALINGS
from mammoxai.nets.backbones import build_backbone
from mammoxai.reports import hardware_description

REPO = BUNDLE_ROOT.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
SECTION = "Metadata pretraining throughput"


@dataclass
class Setting:
    batch_size: int
    image_size: tuple[int, int]
    amp: bool
    channels_last: bool


@dataclass
class Result:
    setting: Setting
    images_per_second: float
    step_ms: float
    data_wait_share: float
    mean_batch: float
    """images per timed step: below the batch size asked for when the cohort's images run out within an epoch's
    batches (the sampler then gives a smaller last batch), so the table shows what ran"""

    def batch_label(self) -> str:
        asked = self.setting.batch_size
        return str(asked) if self.mean_batch == asked else f"{asked} (ran {self.mean_batch:.1f} on average)"


class StepTimer:
    """Per iteration: when it ended, how long the trainer waited for its batch, and the batch's size."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.waits: list[float] = []
        self.ends: list[float] = []
        self.sizes: list[int] = []
        self._asked = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _batch_started(self, engine: Engine) -> None:
        self._asked = time.perf_counter()

    def _batch_completed(self, engine: Engine) -> None:
        self.waits.append(time.perf_counter() - self._asked)
        self.sizes.append(len(engine.state.batch["image"]))

    def _iteration_completed(self, engine: Engine) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step is done when the GPU is, not when it was queued
        self.ends.append(time.perf_counter())

    def summary(self, warmup: int) -> tuple[float, float, float, float]:
        """(images per second, milliseconds per step, data-wait share, mean batch size) over the iterations after
        ``warmup``; images per second counts the images the batches held, not the batch size asked for."""
        total = self.ends[-1] - self.ends[warmup - 1]
        steps = len(self.ends) - warmup
        images = sum(self.sizes[warmup:])
        return images / total, 1000.0 * total / steps, sum(self.waits[warmup:]) / total, images / steps


def pretrain_parser(args: argparse.Namespace, setting: Setting, work: Path, dataset_dir: Path) -> ConfigParser:
    """``configs/pretrain.json`` for one setting: outputs in ``work``, one epoch of the iterations asked for."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "pretrain.json"))
    overrides = {
        "bundle_root": str(BUNDLE_ROOT),
        "ckpt_dir": str(work / "models"),
        "output_dir": str(work / "logs"),
        "cache_dir": str(work / "cache"),
        "dataset_dir": str(dataset_dir),
        "backbone": args.backbone,
        "device": args.device,
        "num_workers": args.num_workers,
        "batch_size": setting.batch_size,
        "image_size": list(setting.image_size),
        "intensity_scaling": args.intensity_scaling,
        "amp": setting.amp,
        "channels_last": setting.channels_last,
        "epochs": 1,
        "log_every": 10**9,
        "train#trainer#epoch_length": args.warmup + args.iterations,
    }
    for key, value in overrides.items():
        parser[key] = value
    # timing training steps: no validation after them (a val_interval beyond the epochs is refused, rightly, since
    # a real run would then save no weights; the benchmark saves none anyway)
    parser["train#handlers"] = [
        handler for handler in parser["train#handlers"] if handler.get("_target_") != "ValidationHandler"
    ]
    return parser


def fill_cache(parser: ConfigParser) -> float:
    """Read every listed image into the cache, as pretraining does before its first epoch; images per second."""
    start = time.perf_counter()
    records = parser.get_parsed_content("records")
    return len(records) / (time.perf_counter() - start)


def measure(args: argparse.Namespace, setting: Setting, work: Path, dataset_dir: Path) -> Result:
    parser = pretrain_parser(args, setting, work, dataset_dir)
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    timer = StepTimer(resolve_device(args.device))
    timer.attach(trainer)
    trainer.run()
    if len(timer.ends) != args.warmup + args.iterations:
        raise RuntimeError(f"the trainer ran {len(timer.ends)} iterations, not {args.warmup + args.iterations}")
    return Result(setting, *timer.summary(args.warmup))


def markdown_table(results: list[Result], args: argparse.Namespace) -> list[str]:
    lines = [
        "| backbone | batch | image (h x w) | intensity scaling | AMP | channels-last | workers | images/s | ms/step "
        "| data wait |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        s = result.setting
        lines.append(
            f"| {args.backbone} | {result.batch_label()} | {s.image_size[0]} x {s.image_size[1]} "
            f"| {args.intensity_scaling} | {'on' if s.amp else 'off'} "
            f"| {'on' if s.channels_last else 'off'} | {args.num_workers} | {result.images_per_second:.1f} "
            f"| {result.step_ms:.0f} | {100 * result.data_wait_share:.1f} % |"
        )
    return lines


def record(
    path: Path,
    results: list[Result],
    args: argparse.Namespace,
    command: str,
    device: torch.device,
    data: str,
    fills: dict,
    notes: list[str],
) -> None:
    """Write this run as the section of ``path`` (BENCHMARKS.md) for its hardware and settings."""
    fill = ", ".join(f"{h} x {w}: {rate:.1f} images/s" for (h, w), rate in fills.items())
    workers = f"{args.num_workers} worker processes" if args.num_workers else "in the main process"
    description = (
        f"Data: {data}. Timed {args.iterations} training iterations after {args.warmup} warm-up iterations per row, "
        f"with the preprocessed-tensor cache filled beforehand (cache fill, {workers}: {fill})."
    )
    record_section(path, SECTION, device, command, description, markdown_table(results, args), notes, recorded_settings)


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r} is not on or off")
    return text == "on"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_dir", type=Path, help="studies with a manifest.csv (default: synthesize them)")
    parser.add_argument("--patients", type=int, default=8, help="synthetic patients when no --dataset_dir")
    parser.add_argument("--size", type=int, default=512, help="rows of the largest synthetic images")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--image-sizes", type=image_size, nargs="+", default=[(512, 416)], help="HxW model grids")
    parser.add_argument("--amp", type=on_off, nargs="+", default=[False, True], help="on / off (CUDA only)")
    parser.add_argument("--channels-last", type=on_off, nargs="+", default=[True])
    parser.add_argument(
        "--intensity_scaling",
        choices=INTENSITY_SCALINGS,
        default="breast_percentiles",
        help="pretrain.json's intensity_scaling (default breast_percentiles)",
    )
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--device", default="auto")
    add_record_option(parser, BENCHMARKS)
    return parser


recorded_settings = command_settings(build_parser, ignore={"device", "record"})
"""What a recorded command measured: its options, defaults filled in, but ``--device`` and ``--record``, which change no
figure. BENCHMARKS.md keeps one section per hardware and these settings."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.iterations < 1:
        parser.error("--warmup and --iterations must be at least 1")
    if min(args.batch_sizes) < 1 or args.patients < 1:
        parser.error("--batch-sizes and --patients must be at least 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be at least 0")
    return args


def benchmark(args: argparse.Namespace, command: str) -> None:
    """Measure every setting and print the table; record it when ``--record`` asks."""
    device = resolve_device(args.device)
    # refused now, not after minutes of synthesis, cache fill and timing
    build_backbone(args.backbone)
    if args.record is not None:
        check_output_path(args.record, "--record", "give the Markdown file to write the run into", folder=False)
    notes = []
    if device.type != "cuda" and True in args.amp:
        args.amp = [False]
        notes.append("AMP settings skipped: MONAI's SupervisedTrainer autocasts on CUDA only.")
    if device.type != "cuda":
        notes.append(
            "Measured on a CPU at a reduced size: the GPU figure (batch 16-32, 512 x 416, AMP on/off) is still owed."
        )
    settings = [
        Setting(*combo) for combo in itertools.product(args.batch_sizes, args.image_sizes, args.amp, args.channels_last)
    ]
    results, fills = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_pretrain_") as scratch:
        work = Path(scratch)
        if args.dataset_dir is None:
            dataset_dir = work / "studies"
            synthesize(dataset_dir, patients=args.patients, seed=0, size=args.size, workers=max(1, args.num_workers))
            data = f"{args.patients} synthetic patients, {args.size} rows (mammoxai.data.synth, seed 0)"
        else:
            dataset_dir = args.dataset_dir.resolve()
            data = f"the studies in {dataset_dir.name}"
        for setting in settings:
            if setting.image_size not in fills:
                fills[setting.image_size] = fill_cache(pretrain_parser(args, setting, work, dataset_dir))
            result = measure(args, setting, work, dataset_dir)
            results.append(result)
            print("\n".join(markdown_table([result], args)[2:]), flush=True)
    print(f"\n{hardware_description(device)}")
    print("\n".join(markdown_table(results, args)))
    for note in notes:
        print(note)
    if args.record is not None:
        record(args.record, results, args, command, device, data, fills, notes)
        print(f"recorded in {args.record}")


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(arguments)
    return exit_status(lambda: benchmark(args, shlex.join(["python", "scripts/bench_pretrain.py", *arguments])))


if __name__ == "__main__":
    sys.exit(main())
