#!/usr/bin/env python
"""Speed of the saliency engine, side by side in one run on the same model and input.

Issue 6 sets targets for the saliency methods on a GPU; this script measures them, every row on the same
randomly initialised one-channel ResNet-18 (torchvision's, first convolution for grey images; nothing is
downloaded) and the same random input:

* **Grad-CAM**: images per second of ours batched (:class:`mammoxai.saliency.GradCAM`, one forward and one
  backward pass for the whole batch, normalised on the device); of the reference implementations on the same
  batch, each making the same maps (upsampled to the input, min-max scaled per image; the tests in
  ``tests/test_saliency_reference.py`` check that they agree): pytorch-grad-cam's ``GradCAM`` (maps moved to the
  CPU, normalised and resized image by image with NumPy and OpenCV; the issue's target is ours at least 10x
  faster), Captum's ``LayerGradCam`` followed by ``LayerAttribution.interpolate`` and a min-max on the device
  (given the predicted classes, which Captum does not choose itself) and MONAI's :class:`monai.visualize.GradCAM`
  (normalised image by image through NumPy); of ours called image by image; and of the forward pass alone (the
  ceiling: the target is ours at 60 % of it or more);
* **RELAX**: masked images per second of the shared masking engine (:class:`mammoxai.saliency.RELAX`: masks made on
  the device, chunks, sums accumulated with ``einsum``), of the official per-mask Python loop (one masked forward
  pass per mask, running importance and uncertainty updated after each), and of the raw forward pass of as many
  unmasked crops in the same chunks (the target: the engine at 80 % of it);
* **CorRELAX**: seconds per image of the ``faithful`` and ``fast`` presets on a breast-shaped image.

Times are medians over ``--repeats`` runs after ``--warmup`` untimed ones (cuDNN autotuning and allocator growth
are not steady state), with the device synchronised before each clock reading; the rows of a group (Grad-CAM,
RELAX) take turns within each round, so load that comes and goes on a shared machine slows them alike. A CorRELAX
preset is warmed up on a 512 x 512 corner of the breast (the same view batches and kernels) and timed over
``--correlax-repeats`` whole images: a faithful run at full-field size takes minutes, and warming it up on the whole
image doubled them.
pytorch-grad-cam and Captum come with the ``bench`` extra (``pip install -e .[bench]``). ``--groups`` and
``--correlax-presets`` time some of the rows only, so that a machine lent for minutes can run the long faithful
CorRELAX timing in a command of its own.

A table is printed; nothing else is written unless ``--record`` is given. With it, the run is written with its
command, hardware and load as a section of ``BENCHMARKS.md`` at the repository root (or of the file named by
``--record FILE``): an earlier section of the same hardware and the same settings (every option but ``--device``,
``--note`` and ``--record``, defaults filled in) is replaced, and a run of other settings, such as the reduced CPU
example below, is added beside the figures already there instead of replacing them.

Example (GPU, the issue's full-field size)::

    python scripts/bench_saliency.py --image-size 1024x832 --batch-size 16 --relax-size 256x256 \\
        --relax-masks 3000 --correlax-size 3000x2400 --record

Example (CPU, reduced)::

    python scripts/bench_saliency.py --image-size 256x208 --batch-size 4 --relax-size 128x128 --relax-masks 64 \\
        --correlax-size 320x288 --correlax-mask-fraction 0.05 --repeats 3 --warmup 1 \\
        --note "The CPU was shared with other jobs: read single rows as rough."
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam
from monai.visualize import GradCAM as MonaiGradCAM
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from torch import nn

from mammoxai.benchmarks import add_record_option, command_settings, image_size, record_section
from mammoxai.cli import exit_status
from mammoxai.errors import check_output_path
from mammoxai.inference import resolve_device
from mammoxai.nets.backbones import adapt_input_channels
from mammoxai.reports import hardware_description
from mammoxai.saliency import PRESETS, RELAX, GradCAM, RandomMasks, get_method
from mammoxai.saliency.gradcam import normalise_maps
from mammoxai.saliency.relax import similarity

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "BENCHMARKS.md"
SECTION = "Saliency speed"
TARGET_LAYER = "layer4"
REPRESENTATION_LAYER = "avgpool"


def resnet18(num_classes: int, device: torch.device) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised, for one-channel images."""
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    conv = network.conv1
    network.conv1 = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        network.conv1.weight.copy_(adapt_input_channels(conv.weight, 1))
    return network.to(device).eval()


def breast_image(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(1, 1, H, W) random texture inside a half-ellipse against the left edge, zero background (as preprocessed)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    inside = (cols / (0.85 * width)) ** 2 + ((rows - height / 2) / (0.45 * height)) ** 2 < 1
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(height, width, generator=generator) * inside)[None, None].to(device)


def median_seconds(
    runs: Mapping[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median wall time of each run after ``warmup`` untimed rounds, the device synchronised around each call.

    The runs take turns within each round: a slowdown from other processes lasting a few seconds then falls on
    every run alike, instead of on whichever was being timed, and the ratios between them stay meaningful.
    """

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronise()
            start = time.perf_counter()
            run()
            synchronise()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def relax_per_mask_loop(
    network: nn.Module, image: torch.Tensor, masks: RandomMasks
) -> tuple[torch.Tensor, torch.Tensor]:
    """RELAX as the official code computes it: one masked forward pass per mask, importance and uncertainty updated
    after each (a weighted Welford recursion)."""
    features: list[torch.Tensor] = []
    hook = getattr(network, REPRESENTATION_LAYER).register_forward_hook(
        lambda _m, _i, out: features.append(out.flatten(1))
    )
    try:
        with torch.no_grad():
            network(image)
            reference = features.pop()
            importance = torch.zeros(image.shape[2:], device=image.device)
            uncertainty = torch.zeros_like(importance)
            weight = torch.zeros_like(importance)
            for index in range(len(masks)):
                mask = masks(index, index + 1)[0]
                network(image * mask)
                score = similarity(features.pop()[:, None], reference)[0, 0]
                weight += mask
                previous = importance.clone()
                importance += mask * (score - importance) / weight.clamp_min(1e-10)
                uncertainty += mask * (score - importance) * (score - previous)
    finally:
        hook.remove()
    return importance, uncertainty / (weight - 1).clamp_min(1e-10)


def raw_forward(network: nn.Module, crops: torch.Tensor, count: int, chunk: int) -> None:
    """Forward passes of ``count`` unmasked copies of ``crops`` in chunks: what the masking engine cannot beat."""
    with torch.no_grad(), torch.autocast(crops.device.type, enabled=crops.device.type == "cuda"):
        for start in range(0, count, chunk):
            network(crops.expand(min(chunk, count - start), -1, -1, -1))


Rows = list[tuple[str, str, str]]
"""A group's table rows: what was timed, its setting, its figure."""


def measure_gradcam(args: argparse.Namespace, device: torch.device, amp: bool) -> tuple[Rows, list[str]]:
    """Grad-CAM, ours batched and image by image, against the reference implementations and the forward pass."""
    rows, notes = [], []
    height, width = args.image_size
    classifier = resnet18(3, device)
    batch = torch.rand(args.batch_size, 1, height, width, device=device)
    setting = f"batch {args.batch_size}, {height} x {width}"

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, enabled=amp)

    ours = GradCAM(classifier, TARGET_LAYER)
    # on a copy: MONAI's hooks stay on the network it is given and would run in every other row
    monai_cam = MonaiGradCAM(copy.deepcopy(classifier), target_layers=TARGET_LAYER)

    def forward_only() -> None:
        with torch.no_grad(), autocast():
            classifier(batch)

    def ours_batched() -> None:
        with autocast():
            ours(batch)

    def ours_per_image() -> None:
        with autocast():
            for image in batch:
                ours(image[None])

    def monai_batched() -> None:
        with autocast():
            monai_cam(batch)

    def pytorch_grad_cam_batched() -> None:
        # hooks only while it runs: pytorch-grad-cam's copy every activation to the CPU, and would slow other rows
        with autocast(), ReferenceGradCAM(classifier, [getattr(classifier, TARGET_LAYER)]) as reference:
            reference(batch, targets=None)  # None: each image's predicted class, as ours

    with torch.no_grad():
        predicted = classifier(batch).argmax(dim=1)
    captum_cam = LayerGradCam(classifier, getattr(classifier, TARGET_LAYER))

    def captum_batched() -> None:
        with autocast():
            maps = captum_cam.attribute(batch, target=predicted, relu_attributions=True)
            normalise_maps(LayerAttribution.interpolate(maps.detach(), (height, width), interpolate_mode="bilinear"))

    labels = {
        "forward": "forward only (ceiling)",
        "ours": "Grad-CAM, ours batched",
        "pytorch-grad-cam": "Grad-CAM, pytorch-grad-cam GradCAM",
        "captum": "Grad-CAM, Captum LayerGradCam + interpolate",
        "monai": "Grad-CAM, MONAI monai.visualize.GradCAM",
        "per image": "Grad-CAM, ours image by image",
    }
    runs = {
        "forward": forward_only,
        "ours": ours_batched,
        "pytorch-grad-cam": pytorch_grad_cam_batched,
        "captum": captum_batched,
        "monai": monai_batched,
        "per image": ours_per_image,
    }
    figures = median_seconds(runs, device, args.warmup, args.repeats)
    for key, seconds in figures.items():
        rows.append((labels[key], setting, f"{args.batch_size / seconds:.1f} images/s"))
    batched = figures["ours"]
    notes.append(
        f"Grad-CAM batched: {figures['pytorch-grad-cam'] / batched:.1f}x pytorch-grad-cam (target on an H100: 10x or "
        f"more), {figures['captum'] / batched:.1f}x Captum, {figures['monai'] / batched:.1f}x MONAI, "
        f"{figures['per image'] / batched:.1f}x image by image; {100 * figures['forward'] / batched:.0f} % of "
        "forward-only throughput (target: 60 % or more)."
    )
    return rows, notes


def measure_relax(args: argparse.Namespace, device: torch.device, amp: bool) -> tuple[Rows, list[str]]:
    """RELAX: the masking engine against the official per-mask loop and the raw forward pass of the crops."""
    classifier = resnet18(3, device)
    crop_h, crop_w = args.relax_size
    crop = breast_image(crop_h, crop_w, device)
    masks = RandomMasks(args.relax_masks, (crop_h, crop_w), grid=7, keep_prob=0.5, seed=0, device=device)
    engine = RELAX(
        classifier, REPRESENTATION_LAYER, num_masks=args.relax_masks, grid=7, chunk_size=args.chunk_size, amp=amp
    )
    relax_setting = f"1 image {crop_h} x {crop_w}, {args.relax_masks} masks, grid 7, chunk {args.chunk_size}"
    relax = median_seconds(
        {
            "raw forward of the crops (ceiling)": lambda: raw_forward(
                classifier, crop, args.relax_masks, args.chunk_size
            ),
            "RELAX, masking engine": lambda: engine.explain(crop),
            "RELAX, official per-mask loop": lambda: relax_per_mask_loop(classifier, crop, masks),
        },
        device,
        args.warmup,
        args.repeats,
    )
    rows = [
        (what, relax_setting, f"{args.relax_masks / seconds:.1f} masked images/s") for what, seconds in relax.items()
    ]
    notes = [
        f"RELAX engine: {relax['RELAX, official per-mask loop'] / relax['RELAX, masking engine']:.1f}x the per-mask loop, "
        f"{100 * relax['raw forward of the crops (ceiling)'] / relax['RELAX, masking engine']:.0f} % of the raw forward "
        "throughput of the crops."
    ]
    return rows, notes


def measure_correlax(args: argparse.Namespace, device: torch.device, amp: bool) -> tuple[Rows, list[str]]:
    """Seconds per image of each CorRELAX preset asked for, on a breast-shaped image."""
    rows, notes = [], []
    lesion_net = resnet18(4, device)
    full_h, full_w = args.correlax_size
    mammogram = breast_image(full_h, full_w, device)
    # warmed up on a corner of the breast: the same view batches and kernels, without a faithful run's minutes
    view = max(preset["view_size"] for preset in PRESETS["correlax"].values())
    top = max(0, min(full_h // 2 - view, full_h - 2 * view))
    warm_up = mammogram[..., top : top + 2 * view, : 2 * view]
    for preset in args.correlax_presets:
        masks_used = max(2, round(PRESETS["correlax"][preset]["num_masks"] * args.correlax_mask_fraction))
        correlax = get_method(
            "correlax",
            lesion_net,
            preset=preset,
            representation_layer=REPRESENTATION_LAYER,
            num_masks=masks_used,
            background_class=3,
            chunk_size=args.chunk_size,
            amp=amp,
        )
        correlax.explain(warm_up)
        outcome = {}  # the last timed run's result, for its view counts
        run = {preset: lambda: outcome.update(result=correlax.explain(mammogram))}
        seconds = median_seconds(run, device, 0, args.correlax_repeats)[preset]
        result = outcome["result"]
        settings = PRESETS["correlax"][preset]
        described = (
            f"{full_h} x {full_w}, view {settings['view_size']}, stride {settings['stride']}, {masks_used} masks "
            f"({result.views[0]} views, {result.refined[0]} refined)"
        )
        rows.append((f"CorRELAX, {preset} preset", described, f"{seconds:.2f} s/image"))
    if args.correlax_mask_fraction != 1.0:
        notes.append(
            f"CorRELAX masks scaled by {args.correlax_mask_fraction} from the presets' (faithful 1280, fast 256) to fit "
            "the run's time; a per-image time scales about linearly with the masks."
        )
    return rows, notes


GROUPS = {"gradcam": measure_gradcam, "relax": measure_relax, "correlax": measure_correlax}
"""The groups of rows, each timed on its own model and input; ``--groups`` picks some, in this order."""


def measure(args: argparse.Namespace, device: torch.device) -> tuple[Rows, list[str]]:
    """Rows (what, setting, figure) and notes of the groups asked for."""
    rows, notes = [], []
    amp = device.type == "cuda"
    for name, group in GROUPS.items():
        if name in args.groups:
            group_rows, group_notes = group(args, device, amp)
            rows.extend(group_rows)
            notes.extend(group_notes)
    return rows, notes


def markdown_table(rows: Rows) -> list[str]:
    return [
        "| what | setting | speed |",
        "|---|---|---|",
        *(f"| {what} | {setting} | {figure} |" for what, setting, figure in rows),
    ]


def record(path: Path, rows: Rows, notes: list[str], command: str, device: torch.device) -> None:
    """Write this run as the section of ``path`` (BENCHMARKS.md) for its hardware and settings."""
    description = (
        f"Model: torchvision ResNet-18, one input channel, random weights; Grad-CAM at `{TARGET_LAYER}`, RELAX and "
        f"CorRELAX representation `{REPRESENTATION_LAYER}`. Medians of timed runs after warm-up, device synchronised, "
        "the rows of a group taking turns."
    )
    record_section(path, SECTION, device, command, description, markdown_table(rows), notes, recorded_settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=image_size, default=(1024, 832), help="HxW of the Grad-CAM input")
    parser.add_argument("--batch-size", type=int, default=16, help="Grad-CAM batch")
    parser.add_argument("--relax-size", type=image_size, default=(256, 256), help="HxW of the RELAX crop")
    parser.add_argument("--relax-masks", type=int, default=3000, help="RELAX masks (paper: 3000)")
    parser.add_argument("--chunk-size", type=int, default=256, help="masked images per forward pass")
    parser.add_argument(
        "--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS), help="which rows to time (default: all)"
    )
    parser.add_argument("--correlax-size", type=image_size, default=(3000, 2400), help="HxW of the CorRELAX image")
    parser.add_argument("--correlax-mask-fraction", type=float, default=1.0, help="scale the presets' mask counts")
    parser.add_argument(
        "--correlax-presets",
        nargs="+",
        choices=list(PRESETS["correlax"]),
        default=list(PRESETS["correlax"]),
        help="which CorRELAX presets to time (default: all)",
    )
    parser.add_argument(
        "--correlax-repeats", type=int, default=1, help="timed CorRELAX runs (after an untimed one on a corner)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before the Grad-CAM and RELAX timings")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per Grad-CAM and RELAX row")
    parser.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda or cuda:N")
    add_record_option(parser, BENCHMARKS)
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a sentence added to the run's notes, e.g. that the machine was shared with other jobs (repeatable)",
    )
    return parser


recorded_settings = command_settings(build_parser, ignore={"device", "note", "record"})
"""What a recorded command measured: its options, defaults filled in, but ``--device``, ``--note`` and ``--record``, which change no
figure. BENCHMARKS.md keeps one section per hardware and these settings."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (
        min(args.batch_size, args.relax_masks, args.chunk_size, args.repeats, args.correlax_repeats) < 1
        or args.warmup < 0
    ):
        parser.error("sizes, masks and repeats must be at least 1, --warmup at least 0")
    args.correlax_presets = list(dict.fromkeys(args.correlax_presets))  # a preset named twice is timed once
    if args.correlax_mask_fraction <= 0:
        parser.error("--correlax-mask-fraction must be above 0")
    view = max(preset["view_size"] for preset in PRESETS["correlax"].values())
    if "correlax" in args.groups and min(args.correlax_size) < view:  # only CorRELAX runs at that size
        parser.error(f"--correlax-size must be at least {view}x{view}, one local view of the CorRELAX presets")
    return args


def benchmark(args: argparse.Namespace, command: str) -> None:
    """Measure, print the table and notes; record them when ``--record`` asks."""
    device = resolve_device(args.device)
    if args.record is not None:  # refused now, not after minutes of timing
        check_output_path(args.record, "--record", "give the Markdown file to write the run into", folder=False)
    rows, notes = measure(args, device)
    notes.extend(args.note)
    if device.type != "cuda":
        notes.append(
            "Measured on a CPU at a reduced size: the GPU figures at full-field size (Grad-CAM 1024 x 832, RELAX 3000 "
            "masks, CorRELAX on a 3000 x 2400 image) and the issue's targets are still owed."
        )
    print(f"{hardware_description(device)}; torch {torch.__version__}")
    print("\n".join(markdown_table(rows)))
    for note in notes:
        print(f"- {note}")
    if args.record is not None:
        record(args.record, rows, notes, command, device)
        print(f"recorded in {args.record}")


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(arguments)
    return exit_status(lambda: benchmark(args, shlex.join(["python", "scripts/bench_saliency.py", *arguments])))


if __name__ == "__main__":
    sys.exit(main())
