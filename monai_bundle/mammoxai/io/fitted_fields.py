"""Write the fitted metadata label space of a pretraining checkpoint as a ``metadata_fields.json``.

A learned vocabulary (the X-ray systems of a site's archive) cannot be stated in ``configs/metadata_fields.json``:
pretraining learns it from its training split and stores it in ``pretrained.pt`` (``info.label_space``). To serve
such a field, ``train.json`` and ``inference.json`` need those classes as a file (``metadata_fields_file``)::

    python -m mammoxai.io.fitted_fields --checkpoint models/pretrained.pt --out configs/metadata_fields_fitted.json

The classes are taken from the checkpoint rather than fitted again on a manifest, because fine-tuning from
``pretrained.pt`` refuses a served field whose classes differ from the pretrained head's
(:func:`mammoxai.training.finetune.build_metadata_classifier`): only the checkpoint's own vocabulary, in its
order, is guaranteed to fit the heads it initialises, whatever manifest, split or ``min_count`` is at hand now.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mammoxai.cli import exit_status
from mammoxai.errors import check_output_path
from mammoxai.io.fields import MetadataLabelSpace
from mammoxai.training.pretrain import load_pretrained

__all__ = ["write_fitted_fields", "main"]


def write_fitted_fields(
    checkpoint: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False
) -> MetadataLabelSpace:
    """Write the label space ``checkpoint``'s heads predict, learned vocabularies included, to ``out``.

    The file defines exactly the checkpoint's fields, so every field it serves has a pretrained head, and its
    description names the checkpoint, since classes separated from their weights mean nothing.

    Args:
        checkpoint: a ``pretrained.pt`` (or epoch checkpoint) written by ``configs/pretrain.json``.
        out: the JSON file to write (its folder is created).
        overwrite: replace an existing ``out``; refused otherwise, as it may be a hand-edited config.

    Returns:
        The label space written.

    Raises:
        MammoXAIError: ``out`` exists (without ``overwrite``) or is a folder; ``checkpoint`` is missing or is
            not a metadata-pretraining checkpoint.
    """
    fix = "give the JSON file to write, e.g. --out configs/metadata_fields_fitted.json"
    out = check_output_path(out, "--out", fix, folder=False, overwrite=overwrite)
    fitted = load_pretrained(checkpoint).label_space
    origin = f"The fitted label space of {Path(checkpoint).resolve()}: its heads' fields and classes."
    description = f"{origin} {fitted.description}".strip()
    space = MetadataLabelSpace([fitted.field(name) for name in fitted.fields], fitted.identity_keys, description)
    out.parent.mkdir(parents=True, exist_ok=True)
    space.to_file(out)
    return space


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mammoxai.io.fitted_fields",
        description="Write the metadata fields a pretraining checkpoint learned (the X-ray systems included) as a "
        "metadata_fields.json for train.json's and inference.json's --metadata_fields_file.",
    )
    parser.add_argument("--checkpoint", required=True, help="pretrained.pt written by configs/pretrain.json")
    parser.add_argument("--out", required=True, help="JSON file to write, e.g. configs/metadata_fields_fitted.json")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    args = parser.parse_args(argv)

    def write() -> None:
        space = write_fitted_fields(args.checkpoint, args.out, args.overwrite)
        classes = ", ".join(f"{name} ({space.num_classes(name)})" for name in space.fields)
        print(f"fields {classes} -> {args.out}")

    return exit_status(write)


if __name__ == "__main__":
    sys.exit(main())
