"""Saliency metrics on hand-built maps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammoxai.metrics import (
    ConfidenceInterval,
    deletion_insertion_auc,
    energy_pointing_game,
    paired_pointing_difference,
    pointing_game,
    pointing_game_summary,
    randomisation_sanity,
    widen_box,
)
from mammoxai.saliency.comparison import verdict


def lesion() -> np.ndarray:
    region = np.zeros((20, 20), dtype=bool)
    region[5:8, 5:8] = True
    return region


def peak_at(row: int, col: int) -> np.ndarray:
    heatmap = np.zeros((20, 20))
    heatmap[row, col] = 1.0
    return heatmap


def test_maximum_inside_the_region_is_a_hit_and_outside_a_miss():
    assert pointing_game(peak_at(6, 6), lesion())
    assert not pointing_game(peak_at(15, 15), lesion())


def test_tolerance_in_pixels_and_in_millimetres():
    near = peak_at(10, 6)  # 3 rows below the lesion's last row (7)
    assert not pointing_game(near, lesion(), tolerance=2)
    assert pointing_game(near, lesion(), tolerance=3)
    assert not pointing_game(near, lesion(), tolerance=1.0, spacing=(0.5, 0.1))  # 3 rows of 0.5 mm = 1.5 mm
    assert pointing_game(near, lesion(), tolerance=1.5, spacing=(0.5, 0.1))


def test_summary_gives_per_class_accuracy_class_mean_and_threshold():
    rows = [("mass", True, 0.9), ("mass", False, 0.8), ("calcification", True, 0.2), ("calcification", True, 0.7)]
    summary = pointing_game_summary(rows)
    assert summary == {"calcification": 1.0, "mass": 0.5, "class_mean": 0.75, "overall": 0.75, "n": 4.0}
    assert pointing_game_summary(rows, score_threshold=0.5)["n"] == 3.0


def test_boxes_are_widened_by_the_stride():
    mask = widen_box((5, 5, 8, 8), margin=2, shape=(20, 20))
    assert mask.sum() == 7 * 7 and mask[3, 3] and not mask[2, 3]
    assert pointing_game(peak_at(9, 9), mask) and not pointing_game(peak_at(9, 9), widen_box((5, 5, 8, 8), 0, (20, 20)))
    rows_then_columns = widen_box((5, 5, 8, 8), margin=(1, 3), shape=(20, 20))  # a stride over a resized crop
    assert rows_then_columns.sum() == 5 * 9 and rows_then_columns[4, 2] and not rows_then_columns[3, 5]


def test_energy_pointing_game_is_the_share_inside():
    heatmap = np.zeros((20, 20))
    heatmap[6, 6], heatmap[15, 15] = 3.0, 1.0
    assert energy_pointing_game(heatmap, lesion()) == pytest.approx(0.75)
    assert energy_pointing_game(np.zeros((20, 20)), lesion()) == 0.0


class BrightBox(torch.nn.Module):
    """Class 1's logit is 20 × the mean of a box: the evidence lives there only."""

    def forward(self, x):
        score = 20.0 * x[:, 0, 4:8, 4:8].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_deletion_and_insertion_reward_the_right_map():
    image = torch.ones(1, 16, 16)
    good = torch.zeros(16, 16)
    good[4:8, 4:8] = 1.0
    bad = 1.0 - good
    good_deletion, good_insertion = deletion_insertion_auc(BrightBox(), image, good, class_index=1, steps=16)
    bad_deletion, bad_insertion = deletion_insertion_auc(BrightBox(), image, bad, class_index=1, steps=16)
    assert good_deletion < bad_deletion - 0.3
    assert good_insertion > bad_insertion + 0.3


def test_deletion_ignores_pixels_outside_the_breast():
    image = torch.ones(1, 16, 16)
    breast = torch.zeros(16, 16, dtype=torch.bool)
    breast[:8, :8] = True
    heatmap = torch.rand(16, 16)
    deletion, _ = deletion_insertion_auc(BrightBox(), image, heatmap, class_index=1, breast=breast, steps=8)
    outside_first = heatmap.clone()
    outside_first[8:, 8:] = 10.0  # the background ranks first, but is never deleted
    assert deletion_insertion_auc(BrightBox(), image, outside_first, 1, breast=breast, steps=8)[0] == pytest.approx(
        deletion
    )


def test_randomisation_sanity_is_high_for_identical_maps_and_low_for_unrelated():
    rng = np.random.default_rng(0)
    maps = rng.random((16, 16))
    assert randomisation_sanity(maps, maps * 2) == pytest.approx(1.0)
    assert abs(randomisation_sanity(maps, rng.random((16, 16)))) < 0.2
    assert randomisation_sanity(maps, np.zeros((16, 16))) == 0.0


def test_paired_pointing_difference_sees_a_small_shift_that_unpaired_rates_cannot():
    # 400 findings of 200 patients; the second map misses 12 more (3 %) of the findings the first finds
    rng = np.random.default_rng(0)
    first = rng.random(400) < 0.5
    second = first.copy()
    second[np.flatnonzero(first)[:12]] = False
    categories = ["mass", "calcification"] * 200
    patients = [f"p{i // 2}" for i in range(400)]
    difference = paired_pointing_difference(categories, first, second, patients, n=500)
    assert difference["overall"].estimate == pytest.approx(12 / 400)
    assert 0.0 < difference["overall"].low <= difference["overall"].high < 0.06
    by_class = {
        name: first[np.array(categories) == name].mean() - second[np.array(categories) == name].mean()
        for name in ("mass", "calcification")
    }
    assert difference["class_mean"].estimate == pytest.approx(np.mean(list(by_class.values())))
    same = paired_pointing_difference(categories, first, first, patients, n=200)
    assert same["overall"].low == same["overall"].high == 0.0
    only_overall = paired_pointing_difference(categories, first, second, patients, n=500, statistics=("overall",))
    assert only_overall == {"overall": difference["overall"]}


def test_paired_pointing_difference_needs_every_finding_paired():
    with pytest.raises(ValueError, match="pair every finding"):
        paired_pointing_difference(["mass", "mass"], [True, False], [True])
    with pytest.raises(ValueError, match="unknown statistics"):
        paired_pointing_difference(["mass"], [True], [False], statistics=("median",))


@pytest.mark.parametrize(
    "low, high, patients, expected",
    [
        (-0.01, 0.015, 40, "within"),
        (0.03, 0.08, 40, "beyond"),
        (-0.09, -0.025, 40, "beyond"),
        (-0.01, 0.03, 40, "inconclusive"),
        (0.0, 0.0, 3, "inconclusive"),  # one tight interval over three patients says little
        (float("nan"), float("nan"), 40, "inconclusive"),
    ],
)
def test_a_difference_is_read_against_the_margin(low, high, patients, expected):
    interval = ConfidenceInterval((low + high) / 2, low, high, 0.95, 100)
    assert verdict(interval, 0.02, patients) == expected
