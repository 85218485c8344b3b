"""Do two saliency maps point equally well? The pointing game of two methods, or of one method in two runs, compared
finding by finding.

Issue 6 asks that CorRELAX's ``fast`` preset point within 0.02 of the ``faithful`` one. Two hit rates measured on
a few hundred findings each carry intervals of about ±0.05, so comparing them side by side can never show a
difference that small; comparing the two maps' outcomes on the *same* findings can
(:func:`~mammoxai.metrics.paired_pointing_difference`: a paired, patient-cluster bootstrap). The outcomes come
from the ``finding_hits`` that :class:`~mammoxai.saliency.evaluation.SaliencyEvaluator` keeps in ``report.json``;
findings are matched by image and index, so two runs of ``scripts/evaluate_saliency.py`` on the same study set
(e.g. ``--correlax_preset fast`` and ``--correlax_preset faithful``) compare directly.

Each difference (first minus second) is read against a ``margin``: ``within`` when its 95 % interval lies inside
±margin (the two are shown equivalent to that margin), ``beyond`` when the interval lies wholly outside it (shown
to differ by more), ``inconclusive`` otherwise (more findings are needed to tell) and whenever the findings come
from fewer than :data:`MIN_PATIENTS` patients, since a bootstrap over so few clusters understates the spread (over
one patient there is no interval at all).

Outcomes are only comparable when both evaluations scored them the same way: a hit within 40 pixels of a lesion is
not a hit on it, so two runs with different pointing-game tolerances are refused (the tolerance each evaluation
used is in its ``report.json``; reports written before it was kept are compared with a warning), and the report
names the tolerance.

Example::

    python scripts/compare_saliency.py --reports fast/saliency_evaluation/report.json \\
        faithful/saliency_evaluation/report.json --methods "correlax prediction" --margin 0.02 --out fast_vs_faithful
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from mammoxai.cli import exit_status
from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.metrics import ConfidenceInterval, paired_pointing_difference
from mammoxai.reports import Report
from mammoxai.saliency.evaluation import FindingHit

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_PATIENTS",
    "finding_hits",
    "pointing_game_settings",
    "check_same_scoring",
    "verdict",
    "compare_pointing_games",
    "main",
]

EVALUATE_COMMAND = "python scripts/evaluate_saliency.py --dataset_dir <studies>"
#: fewer patients than this and a difference is inconclusive, whatever its bootstrap interval says
MIN_PATIENTS = 10


def _read_values(path: Path) -> dict[str, Any]:
    """The ``values`` of a ``report.json`` (empty when it has none).

    Raises:
        MammoXAIError: the file is missing or not JSON.
    """
    if not path.is_file():
        raise MammoXAIError(path, "report not found", f"evaluate first: {EVALUATE_COMMAND}")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MammoXAIError(
            path, f"is not a JSON report ({error})", "give the report.json of a saliency evaluation"
        ) from None
    values = document.get("values") if isinstance(document, dict) else None
    return values if isinstance(values, dict) else {}


def finding_hits(values: Mapping[str, Any], method: str, path: Path) -> dict[tuple[str, int], FindingHit]:
    """The per-finding outcomes of ``method`` in the ``values`` of the saliency evaluation report at ``path``,
    keyed by (image, finding).

    Raises:
        MammoXAIError: the report holds no per-finding outcomes (not a saliency evaluation, or one written before
            they were kept), or it did not evaluate ``method`` (the message lists those it did).
    """
    methods = values.get("finding_hits")
    if not isinstance(methods, dict):
        raise MammoXAIError(
            path,
            "holds no per-finding outcomes (finding_hits)",
            f"give a saliency evaluation's report.json, or rerun: {EVALUATE_COMMAND}",
        )
    if method not in methods:
        raise MammoXAIError(path, f"has no method {method!r}", f"use one of {sorted(methods)}")
    keys = [column.name for column in fields(FindingHit)]
    columns = zip(*(methods[method][key] for key in keys), strict=True)
    outcomes = [FindingHit(**dict(zip(keys, values, strict=True))) for values in columns]
    return {(outcome.image, outcome.finding): outcome for outcome in outcomes}


def pointing_game_settings(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tolerance and unit a saliency evaluation's pointing game used
    (:meth:`~mammoxai.saliency.evaluation.SaliencyEvaluator.pointing_game_settings`), from its report's
    ``values``; None for a report written before they were kept."""
    settings = values.get("pointing_game")
    return dict(settings) if isinstance(settings, dict) else None


def _describe(settings: Mapping[str, Any] | None) -> str:
    if settings is None:
        return "not recorded"
    return f"tolerance {settings.get('tolerance', 0.0):g} {settings.get('tolerance_unit', 'px')}"


def check_same_scoring(first: Mapping[str, Any] | None, second: Mapping[str, Any] | None) -> str:
    """Refuse two evaluations whose pointing games were scored differently; returns the scoring in words, for the
    report. A report that does not record its scoring (written before it was kept) cannot be checked: it is
    compared with a warning, and the words say so.

    Raises:
        MammoXAIError: both record their scoring, and it differs (a tolerance adds hits the maps did not earn).
    """
    if first is not None and second is not None and first != second:
        raise MammoXAIError(
            "--reports",
            f"were scored with different pointing games ({_describe(first)} in the first, {_describe(second)} in "
            "the second): their hits would differ by the scoring, not by the maps",
            "compare evaluations run with the same --tolerance and --tolerance_unit",
        )
    if first is None or second is None:
        words = f"first: {_describe(first)}, second: {_describe(second)}; NOT CHECKED to be the same"
        logger.warning("pointing game scoring %s: rerun the evaluation that does not record it", words)
        return words
    return f"{_describe(first)} in both"


def verdict(interval: ConfidenceInterval, margin: float, patients: int = MIN_PATIENTS) -> str:
    """``within`` when the interval lies inside ±margin, ``beyond`` when wholly outside it, else ``inconclusive``
    (also when it is undefined or rests on fewer than :data:`MIN_PATIENTS` ``patients``)."""
    if patients < MIN_PATIENTS:
        return "inconclusive"
    if -margin < interval.low and interval.high < margin:
        return "within"
    if interval.low > margin or interval.high < -margin:
        return "beyond"
    return "inconclusive"


def compare_pointing_games(
    first: Mapping[tuple[str, int], FindingHit],
    second: Mapping[tuple[str, int], FindingHit],
    margin: float = 0.02,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows of the paired comparison of two maps' pointing game on the findings both scored: one per finding
    class, the class mean and overall, with the findings and patients it rests on, each hit rate, the difference
    (first - second), its patient-cluster bootstrap 95 % interval and its :func:`verdict` against ``margin``.

    Returns:
        ``(rows, counts)``; ``counts`` gives the findings ``paired`` and those only ``first`` or only ``second``
        scored (different ``max_images`` or selections leave some unpaired; they are left out).

    Raises:
        MammoXAIError: a negative margin, no finding in common, or a finding whose class differs between the two
            (they were scored against different annotations).
    """
    if margin < 0:
        raise MammoXAIError("margin", f"is {margin}", "give a difference in hit rate >= 0, e.g. 0.02")
    keys = [key for key in first if key in second]
    if not keys:
        raise MammoXAIError(
            "the two evaluations",
            "share no finding",
            "evaluate the same study set (same manifest, eval_where and findings)",
        )
    mismatched = [key for key in keys if first[key].category != second[key].category]
    if mismatched:
        image, finding = mismatched[0]
        raise MammoXAIError(
            f"finding {finding} of {image}",
            f"is a {first[image, finding].category} in one evaluation and a {second[image, finding].category} in the other",
            "compare evaluations of the same findings CSV",
        )
    categories = [first[key].category for key in keys]
    patients = [first[key].patient for key in keys]
    hits_first, hits_second = [first[key].hit for key in keys], [second[key].hit for key in keys]

    def row(
        measure: str, chosen: Sequence[int], interval: ConfidenceInterval, rates: tuple[float, float]
    ) -> dict[str, Any]:
        group = len({patients[i] for i in chosen})
        return {
            "measure": measure, "findings": len(chosen), "patients": group, "first": rates[0], "second": rates[1],
            "difference": interval.estimate, "low": interval.low, "high": interval.high,
            "verdict": verdict(interval, margin, group),
        }  # fmt: skip

    def rates(chosen: Sequence[int]) -> tuple[float, float]:
        return tuple(sum(hits[i] for i in chosen) / len(chosen) for hits in (hits_first, hits_second))

    rows = []
    for category in sorted(set(categories)):
        chosen = [i for i, name in enumerate(categories) if name == category]
        interval = paired_pointing_difference(
            [category] * len(chosen), [hits_first[i] for i in chosen], [hits_second[i] for i in chosen],
            [patients[i] for i in chosen], n=n_bootstrap, seed=seed, statistics=("overall",),
        )["overall"]  # fmt: skip
        rows.append(row(category, chosen, interval, rates(chosen)))
    everything = list(range(len(keys)))
    both = paired_pointing_difference(categories, hits_first, hits_second, patients, n=n_bootstrap, seed=seed)
    class_means = tuple(sum(r[side] for r in rows) / len(rows) for side in ("first", "second"))
    rows.append(row("class mean", everything, both["class_mean"], class_means))
    rows.append(row("overall", everything, both["overall"], rates(everything)))
    counts = {"paired": len(keys), "only_first": len(first) - len(keys), "only_second": len(second) - len(keys)}
    return rows, counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reports", nargs="+", required=True, help="one saliency report.json (two methods), or two (one method each)"
    )
    parser.add_argument(
        "--methods", nargs="+", required=True, help="the method label in both reports, or one per report / side"
    )
    parser.add_argument(
        "--margin", type=float, default=0.02, help="the difference in hit rate that still counts as equal"
    )
    parser.add_argument("--n_bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for report.json and report.md")
    return parser


def _sides(reports: Sequence[str], methods: Sequence[str]) -> list[tuple[str, str]]:
    """(report, method) of the first and second map, from one report and two methods, or two reports and one or two
    methods."""
    if len(reports) == 1 and len(methods) == 2:
        return [(reports[0], methods[0]), (reports[0], methods[1])]
    if len(reports) == 2 and len(methods) in (1, 2):
        return list(zip(reports, methods if len(methods) == 2 else [methods[0], methods[0]], strict=True))
    raise MammoXAIError(
        f"--reports ({len(reports)}) and --methods ({len(methods)})",
        "do not name two maps",
        "give one report with two methods, or two reports with one method (or one each)",
    )


def compare(args: argparse.Namespace, command: str) -> Report:
    """Compare the two maps the arguments name and write the report into ``args.out``."""
    sides = _sides(args.reports, args.methods)
    if args.n_bootstrap < 1:
        raise MammoXAIError("--n_bootstrap", f"is {args.n_bootstrap}", "give a positive number of resamples")
    check_output_path(args.out, "--out", "give a folder for the comparison report")
    values = {report: _read_values(Path(report)) for report, _ in sides}  # each report read once
    first, second = (finding_hits(values[report], method, Path(report)) for report, method in sides)
    scoring = check_same_scoring(*(pointing_game_settings(values[report]) for report, _ in sides))
    rows, counts = compare_pointing_games(first, second, args.margin, args.n_bootstrap, args.seed)
    names = [f"{method} in {report}" for report, method in sides]
    report = Report(
        "Pointing game, paired comparison",
        f"first: {names[0]}; second: {names[1]}. Pointing game scored with {scoring}. "
        f"{counts['paired']} findings scored by both "
        f"({counts['only_first']} only by the first, {counts['only_second']} only by the second, left out). "
        f"difference = first - second, with a {args.n_bootstrap}-resample patient-cluster bootstrap 95 % interval, "
        f"read against ±{args.margin:g}: within (equal to that margin), beyond (differ by more), inconclusive "
        f"(the interval straddles the margin, or fewer than {MIN_PATIENTS} patients).",
        command=command,
    )
    report.add_table("pointing_game_difference", rows, title="Pointing game, first vs second")
    report.add_values("findings", counts, title="Findings")
    report.add_values("pointing_game", {"scoring": scoring}, title="Pointing game")
    report.write(args.out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/compare_saliency.py --reports A [B] --methods M [N] --out <folder>``; a user error is one
    line on stderr and exit status 1."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(arguments)
    status = exit_status(lambda: compare(args, shlex.join(["python", "scripts/compare_saliency.py", *arguments])))
    if status == 0:
        print(f"report written to {Path(args.out) / 'report.md'}")
    return status
