"""Explanation by representation ablation: which learned knowledge a downstream prediction rests on.

After Litchfield et al., "Mammographic image metadata learning for model pretraining and explainable
predictions", SPIE Medical Imaging 2022 (doi:10.1117/12.2626199). A metadata-pretrained network
(:class:`mammoxai.nets.MetadataNet`) represents an image as ``z = sum_k z_k``, one projection ``z_k`` per
pretraining task (X-ray system, view, laterality, thickness, ...). A small downstream classifier is trained on
the *frozen* ``z``. To ask how much its prediction relies on what task ``k`` taught the backbone, ``z_k`` is
replaced by its mean over the classifier's training images — the task's knowledge is removed, the rest of the
representation kept — and the drop in the log-probability of the true class is measured on every image:

    drop_k(x) = log p(y | z(x)) - log p(y | z(x) - z_k(x) + mean_k)

Per task this gives the mean drop, the drop in accuracy and a paired, standardised effect size (Cohen's d_z of
the per-image drops) with a bootstrap 95 % interval; tasks are ranked by effect size. A drop near zero means the
classifier does not use what the task encodes; a large one that it leans on it (in the paper, the X-ray-system
classifier leaned, as it should, on the X-ray-system representation).

:func:`explain_image` does the same for one image and the class predicted for it, so a server can say which
learned knowledge a single prediction leans on.

Example:
    outputs = collect_outputs(net, train_loader)                       # frozen representations
    means = task_means(outputs.z_tasks)
    probe = fit_probe(outputs.z, labels, class_names=systems, target="xray_system")
    effects = ablation_effects(probe, test_outputs.z_tasks, test_labels, means)   # ranked rows
    explain_image(net, probe, image, means)    # [{"task": "xray_system", "logprob_drop": 2.3}, ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks import eval_mode
from torch import nn

from mammoxai.cli import run_bundle_config
from mammoxai.data.dataset import LabelMap, class_spellings
from mammoxai.errors import MammoXAIError, check_output_path
from mammoxai.io.fields import MetadataLabelSpace
from mammoxai.metrics import bootstrap_ci, cohens_dz
from mammoxai.nets.files import read_torch_file
from mammoxai.reports import Report, bar_figure
from mammoxai.training.evaluate_pretrain import bootstrap_groups, collect_outputs
from mammoxai.training.pretrain import record_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "LinearProbe",
    "fit_probe",
    "task_means",
    "ablated",
    "ablation_effects",
    "explain_image",
    "save_explainer",
    "load_explainer",
    "downstream_labels",
    "AblationStudy",
    "main",
]


class LinearProbe(nn.Module):
    """Multinomial logistic regression on a frozen representation: the downstream classifier to be explained.

    A linear model keeps the explanation about the representation: whatever it predicts, ``z`` must already
    carry linearly. Inputs are standardised with the training images' per-dimension mean and standard deviation
    (stored as buffers), so one weight decay suits representations of any scale.

    Args:
        dim: size of the representation ``z``.
        class_names: the classes, in logit order.
        target: what is predicted (a metadata field such as ``"xray_system"`` or a manifest column such as
            ``"case_label"``), kept with the weights.
    """

    def __init__(self, dim: int, class_names: Sequence[str], target: str = ""):
        super().__init__()
        self.class_names = [str(name) for name in class_names]
        self.target = target
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.linear = nn.Linear(dim, len(self.class_names))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of representations (B, dim)."""
        return self.linear((z.float() - self.center) / self.scale)


def fit_probe(
    z: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    target: str = "",
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> LinearProbe:
    """Fit a :class:`LinearProbe` by full-batch L-BFGS on cross-entropy + ``weight_decay/2 * ||W||^2``.

    The problem is convex and small (a few thousand images by a few hundred dimensions), so a deterministic
    second-order solver converges in a few hundred iterations where SGD would need a schedule; the L2 penalty
    keeps the weights finite when the classes are separable, which they often are.

    Args:
        z: (N, dim) training representations.
        labels: (N,) class indices; entries < 0 (unknown) are left out.
        class_names: the classes; indices refer to it.
        target: name of the predicted quantity, stored on the probe.
        weight_decay: L2 penalty on the weights (not the bias), on the standardised inputs.
        max_iter: L-BFGS iterations.

    Raises:
        MammoXAIError: fewer than two classes among the known labels.
    """
    z, labels = z.detach().float().cpu(), torch.as_tensor(labels).long().cpu()
    known = labels >= 0
    z, labels = z[known], labels[known]
    if labels.unique().numel() < 2:
        present = [class_names[i] for i in labels.unique().tolist()]
        raise MammoXAIError(
            f"downstream target {target or 'labels'}",
            f"the training images show {len(present)} class(es) {present}; a classifier needs at least two",
            "choose another target or add images of other classes",
        )
    probe = LinearProbe(z.shape[1], class_names, target)
    probe.center.copy_(z.mean(0))
    probe.scale.copy_(z.std(0).clamp_min(1e-6) if len(z) > 1 else torch.ones(z.shape[1]))
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(z), labels) + 0.5 * weight_decay * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe.eval()


def task_means(z_tasks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of each task's representation (N, dim) over the images given (the probe's training split)."""
    return {task: z.detach().float().mean(0) for task, z in z_tasks.items()}


def ablated(z: torch.Tensor, z_task: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``z`` with one task's ``z_k`` replaced by its mean: ``z - z_k + mean_k`` (since ``z = sum_k z_k``)."""
    return z - z_task + mean.to(z)


def _true_class_logprob(probe: LinearProbe, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (on the CPU): log-probability of its class, and whether the prediction is right."""
    with torch.no_grad():
        logp = F.log_softmax(probe(z.to(probe.center.device)).double(), dim=1).cpu()
    return logp.gather(1, labels[:, None])[:, 0], logp.argmax(1) == labels


def ablation_effects(
    probe: LinearProbe,
    z_tasks: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    means: Mapping[str, torch.Tensor],
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[Any] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Effect of ablating each task's representation on the probe's true-class log-probability.

    Args:
        probe: the downstream classifier.
        z_tasks: per task, (N, dim) representations of the evaluation images; ``z`` is their sum.
        labels: (N,) true classes; images with a label < 0 are left out.
        means: per task, the mean representation over the probe's training images (:func:`task_means`).
        n_bootstrap, seed, level: the bootstrap of the intervals (:func:`mammoxai.metrics.bootstrap_ci`).
        groups: (N,) patient ids; when given, the bootstrap resamples patients rather than images.

    Returns:
        ``(baseline, rows)``: the unablated ``accuracy``, ``mean_logprob`` and ``images``; and one row per task,
        ranked by effect size (largest first), with ``rank``, ``task``, ``mean_logprob_drop`` (+ ``_low`` /
        ``_high``), ``accuracy`` (ablated), ``accuracy_drop``, ``cohens_dz`` (+ ``_low`` / ``_high``).
    """
    labels = torch.as_tensor(labels).long().cpu()
    known = labels >= 0
    if not known.any():
        raise MammoXAIError("ablation evaluation images", "none has a known downstream label", "check the target")
    z_tasks = {task: z.detach().float().cpu()[known] for task, z in z_tasks.items()}
    missing = sorted(set(z_tasks) - set(means))
    if missing:
        raise MammoXAIError("ablation means", f"have no mean for task(s) {missing}", "compute them on the same network")
    labels = labels[known]
    groups = None if groups is None else np.asarray(groups)[known.numpy()]
    z = torch.stack(list(z_tasks.values())).sum(0)
    base_logp, base_correct = _true_class_logprob(probe, z, labels)
    baseline = {
        "accuracy": base_correct.double().mean().item(),
        "mean_logprob": base_logp.mean().item(),
        "images": int(labels.numel()),
    }
    rows = []
    for task, z_task in z_tasks.items():
        logp, correct = _true_class_logprob(probe, ablated(z, z_task, means[task]), labels)
        drops = (base_logp - logp).numpy()
        mean_drop = bootstrap_ci(np.mean, drops, n=n_bootstrap, seed=seed, level=level, groups=groups)
        effect = bootstrap_ci(cohens_dz, drops, n=n_bootstrap, seed=seed, level=level, groups=groups)
        accuracy = correct.double().mean().item()
        rows.append(
            {
                "task": task,
                "mean_logprob_drop": mean_drop.estimate,
                "mean_logprob_drop_low": mean_drop.low,
                "mean_logprob_drop_high": mean_drop.high,
                "accuracy": accuracy,
                "accuracy_drop": baseline["accuracy"] - accuracy,
                "cohens_dz": effect.estimate,
                "cohens_dz_low": effect.low,
                "cohens_dz_high": effect.high,
            }
        )
    # largest effect first; an undefined effect size (fewer than two images) last
    rows.sort(key=lambda row: (np.isnan(row["cohens_dz"]), -np.nan_to_num(row["cohens_dz"]), -row["mean_logprob_drop"]))
    return baseline, [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]


def explain_image(
    net: nn.Module,
    classifier: LinearProbe,
    image: torch.Tensor,
    means: Mapping[str, torch.Tensor],
    target: int | None = None,
) -> list[dict[str, Any]]:
    """Which task's knowledge one prediction leans on: tasks ranked by the drop of the class's log-probability.

    One forward pass gives every ``z_k``; each ablation is then the arithmetic of :func:`ablated` (the same
    ``z`` that ``net.represent(x, ablate={task: mean})`` returns, without one more pass through the backbone
    per task).

    Args:
        net: the pretrained :class:`~mammoxai.nets.MetadataNet` (its ``forward`` returns ``z`` and ``z_tasks``).
        classifier: the downstream :class:`LinearProbe`.
        image: (1, h, w) or (1, 1, h, w) model input (:func:`mammoxai.io.preprocess.prepare_image`).
        means: per task, the training mean of ``z_k`` (:func:`task_means`).
        target: the class index to explain; default the predicted class.

    Returns:
        ``[{"task": name, "logprob_drop": float}, ...]``, largest drop first.
    """
    x = image if image.ndim == 4 else image[None]
    if x.shape[0] != 1:
        raise MammoXAIError("image", f"has shape {tuple(image.shape)}; explain_image takes one image", "pass (1, h, w)")
    parameter = next(net.parameters(), None)
    x = x.to(parameter.device if parameter is not None else "cpu")
    with eval_mode(net):
        outputs = net(x)
    unknown = sorted(set(means) - set(outputs["z_tasks"]))
    if unknown:
        raise MammoXAIError(
            "ablation explainer",
            f"has means of tasks {unknown} that the network lacks",
            "refit it on this network's checkpoint",
        )
    z = outputs["z"].float()
    if target is None:
        with torch.no_grad():
            target = int(classifier(z.to(classifier.center.device)).argmax(1))
    labels = torch.tensor([target])
    base, _ = _true_class_logprob(classifier, z, labels)
    drops = []
    for task, mean in means.items():
        logp, _ = _true_class_logprob(classifier, ablated(z, outputs["z_tasks"][task].float(), mean), labels)
        drops.append({"task": task, "logprob_drop": float(base - logp)})
    return sorted(drops, key=lambda row: -row["logprob_drop"])


def save_explainer(path: str | os.PathLike, probe: LinearProbe, means: Mapping[str, torch.Tensor]) -> Path:
    """Save what :func:`explain_image` needs besides the network: the probe and the task means."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "probe": probe.state_dict(),
            "class_names": probe.class_names,
            "target": probe.target,
            "means": {task: mean.cpu() for task, mean in means.items()},
        },
        path,
    )
    return path


def load_explainer(path: str | os.PathLike) -> tuple[LinearProbe, dict[str, torch.Tensor]]:
    """The probe and task means written by :func:`save_explainer`.

    The file is read by :func:`~mammoxai.nets.files.read_torch_file`, as every weights reader reads its file: read
    here with ``torch.load`` alone, a damaged file raised torch's own ``UnpicklingError`` or ``EOFError``.

    Raises:
        MammoXAIError: the file is missing, not a readable PyTorch file, or not one :func:`save_explainer` wrote.
    """
    fix = "rerun configs/ablation.json"
    if not Path(path).is_file():
        raise MammoXAIError(path, "no ablation explainer here", "run configs/ablation.json first")
    saved = read_torch_file(path, "ablation explainer file", fix)
    try:
        probe = LinearProbe(saved["probe"]["center"].numel(), saved["class_names"], saved["target"])
        probe.load_state_dict(saved["probe"])
        means = dict(saved["means"])
    except (KeyError, IndexError, TypeError, AttributeError, RuntimeError) as error:
        raise MammoXAIError(path, f"is not an ablation explainer file ({error!r})", fix) from None
    return probe.eval(), means


def downstream_labels(
    records: Sequence[Mapping[str, Any]],
    target: str,
    label_space: MetadataLabelSpace,
    class_names: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Class index per record for the downstream target, -1 where unknown, and the class names.

    ``target`` is either a field of ``label_space`` (``"xray_system"``, ``"view"``, ...: labels from the
    header, classes those of the pretrained heads) or a manifest column (``"case_label"``, ``"density"``,
    ...: classes ``class_names``, default the sorted distinct values of ``records`` after ``label_map``). Column
    values and ``class_names`` are matched regardless of case and spacing, as the metadata fields' header values
    are: a CSV that writes "Malignant" on some rows and "malignant" on others (or only in the held-out split) names
    one class, the spelling most rows use. ``label_map`` keys match as training matches them
    (:class:`~mammoxai.data.dataset.LabelMap`, also regardless of case and spacing), so one ``--label_map`` gives
    the probe the classes it gives the classifier.

    Raises:
        MammoXAIError: ``target`` is neither a field nor a column of any record, ``label_map`` is not a mapping
            or maps one label, up to case and spacing, to two classes, or two ``class_names`` are one name up to
            case and spacing.
    """
    if target in label_space.fields:
        labels = [label_space.encode(record_metadata(record))[target] for record in records]
        return torch.as_tensor(labels, dtype=torch.long), label_space.class_names(target)
    values = [record.get(target) for record in records]
    if all(value in (None, "") for value in values):
        raise MammoXAIError(
            f"ablation target {target!r}",
            "is neither a metadata field nor a filled manifest column",
            f"use one of the fields {label_space.fields} or a manifest column such as case_label",
        )
    labelled = [value for value in values if value not in (None, "")]
    classes = list(class_names) if class_names is not None else class_spellings(map(LabelMap(label_map), labelled))
    spelt, index = LabelMap(label_map, classes), {name: i for i, name in enumerate(classes)}
    return torch.tensor([-1 if value in (None, "") else index.get(spelt(value), -1) for value in values]), classes


class AblationStudy:
    """The runner of ``configs/ablation.json``: fit the downstream probe, ablate every task, write the report.

    Args:
        network: the pretrained :class:`~mammoxai.nets.MetadataNet`, weights loaded; it stays frozen.
        label_space: the checkpoint's label space (defines the metadata targets).
        train_dataloader: images on which the probe is fitted and the task means are taken (not shuffled).
        test_dataloader: images on which the effects are measured: other patients (not shuffled).
        output_dir: where ``report.json``, ``report.md`` and ``ablation_effects.png`` go.
        explainer_path: where the probe and task means are saved for :func:`explain_image` (None: not saved).
        overwrite: replace an explainer already at ``explainer_path``; without it an earlier run's explainer
            (perhaps of another target) is refused before anything is fitted, as training refuses earlier weights.
            Accepts the words a command line passes.
        target: the downstream label, a metadata field or a manifest column (see :func:`downstream_labels`).
        label_map: raw value -> class, for a manifest-column target (e.g. ``{"recalled_benign": "benign"}``).
        device, amp: where and how the network runs.
        weight_decay: the probe's L2 penalty.
        n_bootstrap, seed: the patient-level bootstrap of the intervals.
        command: the command line, recorded in the report.
    """

    def __init__(
        self,
        network: nn.Module,
        label_space: MetadataLabelSpace,
        train_dataloader: torch.utils.data.DataLoader,
        test_dataloader: torch.utils.data.DataLoader,
        output_dir: str | os.PathLike,
        explainer_path: str | os.PathLike | None = None,
        overwrite: bool | str = False,
        target: str = "xray_system",
        label_map: Mapping[str, str] | None = None,
        device: torch.device | str = "cpu",
        amp: bool = False,
        weight_decay: float = 1e-3,
        n_bootstrap: int = 1000,
        seed: int = 0,
        command: str | None = None,
    ):
        self.network = network
        self.label_space = label_space
        self.train_dataloader = train_dataloader
        self.test_dataloader = test_dataloader
        self.output_dir = check_output_path(output_dir, "output_dir", "give a folder for the report")
        self.explainer_path = None
        if explainer_path is not None:
            fix = "give a file for the explainer, or --explainer null to save none"
            self.explainer_path = check_output_path(
                explainer_path, "explainer", fix, folder=False, overwrite=overwrite, overwrite_option="--overwrite true"
            )
        self.target = target
        self.label_map = label_map
        self.device = torch.device(device)
        self.amp = amp
        self.weight_decay = weight_decay
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.command = command

    def run(self) -> dict[str, Any]:
        """Fit, ablate, write the report (and the explainer); return the report's JSON document."""
        train_records, test_records = list(self.train_dataloader.dataset.data), list(self.test_dataloader.dataset.data)
        train_labels, classes = downstream_labels(
            train_records, self.target, self.label_space, label_map=self.label_map
        )
        test_labels, _ = downstream_labels(test_records, self.target, self.label_space, classes, self.label_map)
        train = collect_outputs(self.network, self.train_dataloader, self.device, self.amp)
        test = collect_outputs(self.network, self.test_dataloader, self.device, self.amp)
        means = task_means(train.z_tasks)
        probe = fit_probe(train.z, train_labels, classes, self.target, self.weight_decay)
        patients = bootstrap_groups(test_records, self.label_space)
        baseline, rows = ablation_effects(
            probe, test.z_tasks, test_labels, means, self.n_bootstrap, self.seed, groups=patients
        )
        if self.explainer_path is not None:
            save_explainer(self.explainer_path, probe, means)
        report = Report(
            f"Explanation by ablation: {self.target} classifier",
            f"A logistic-regression probe for {self.target} ({len(classes)} classes) was fitted on the frozen "
            f"representation z of {int((train_labels >= 0).sum())} images. On {baseline['images']} images of other "
            "patients, each task's z_k was replaced by its training mean; the table ranks the tasks by Cohen's d_z "
            "of the per-image drop in the true class's log-probability (95 % patient-level bootstrap intervals). "
            "After Litchfield et al., SPIE Medical Imaging 2022.",
            command=self.command,
            device=self.device,
        )
        report.add_values("baseline", {**baseline, "classes": ", ".join(classes)}, title="Probe without ablation")
        report.add_table("effects", rows, title="Effect of ablating each task, ranked")
        report.add_figure(
            "ablation_effects",
            bar_figure(
                [row["task"] for row in rows],
                [row["cohens_dz"] for row in rows],
                f"Ablation effect on the {self.target} classifier",
                "Cohen's d_z of the log-probability drop",
                low=[row["cohens_dz_low"] for row in rows],
                high=[row["cohens_dz_high"] for row in rows],
            ),
            title="Effect sizes",
        )
        report.write(self.output_dir)
        logger.info("ablation report written to %s; largest effect: %s", self.output_dir, rows[0]["task"])
        return report.to_dict()


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/explain_ablation.py --dataset_dir <studies> [--target case_label] ...``"""
    return run_bundle_config("ablation.json", argv, program="python scripts/explain_ablation.py")
