"""BENCHMARKS.md sections: one per benchmark and hardware, replaced by a rerun, others left alone."""

import argparse

import pytest
import torch

from mammoxai.benchmarks import image_size, record_section


def test_a_rerun_replaces_its_section_and_leaves_the_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    cpu = torch.device("cpu")
    record_section(path, "Saliency speed", cpu, "python bench_a.py --old", "Old run.", ["| a |", "|---|", "| 1 |"])
    record_section(path, "Pretraining", cpu, "python bench_b.py", "Other benchmark.", ["| b |", "|---|", "| 2 |"], ["a note"])
    record_section(path, "Saliency speed", cpu, "python bench_a.py --new", "New run.", ["| a |", "|---|", "| 3 |"])
    text = path.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("## Saliency speed: CPU") == 1 and text.count("## Pretraining: CPU") == 1
    assert "--new" in text and "| 3 |" in text and "--old" not in text and "| 1 |" not in text
    assert "| 2 |" in text and "- a note" in text and "load average" in text
    assert text.index("## Saliency speed") < text.index("## Pretraining")  # replaced in place


@pytest.mark.parametrize("text", ["512", "512x", "axb", "0x416"])
def test_a_size_that_is_not_hxw_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
        image_size(text)
    assert image_size("512X416") == (512, 416)
