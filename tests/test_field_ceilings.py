"""Bayes ceilings of the header fields the generator keeps out of the pixels: right, tied to the cohort, and refusing
what they cannot measure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from mammoxai.data.manifest import read_manifest
from mammoxai.data.synth import SYSTEMS, synthesize
from mammoxai.data.synth.ceilings import age_ceiling, compression_force_ceiling, field_ceilings, kvp_ceiling, main
from mammoxai.data.synth.cohort import plan_cohort
from mammoxai.data.synth.study import draw_body, patient_body
from mammoxai.io.fields import MetadataLabelSpace

SPACE = MetadataLabelSpace.default()
FORCE_EDGES = SPACE.field("compression_force").edges


def test_the_ceilings_describe_the_patients_the_generator_writes(tmp_path):
    synthesize(tmp_path, patients=3, seed=5, size=160, prior_fraction=0.0)
    records = read_manifest(tmp_path / "manifest.csv")
    assert len(records) == 12
    for record in records:
        body = patient_body(5, int(record["patient_id"].lstrip("P")))
        assert record["age"] == f"{body.age:03d}Y"
        if record["view"] == "MLO":  # the body's thickness plus 2-8 mm, rounded to 0.1 mm in the manifest
            assert 1.9 <= record["thickness_mm"] - body.thickness_mm <= 8.1


def test_the_age_ceiling_is_the_bayes_rule_that_a_large_sample_of_patients_finds():
    exact = age_ceiling(SPACE)
    field = SPACE.field("age")
    rng = np.random.default_rng(0)
    bodies = [draw_body(rng) for _ in range(40_000)]
    age_bin = np.array([field.encode({"PatientAge": f"{body.age:03d}Y"}) for body in bodies])
    density = np.array([body.density for body in bodies])
    fit, score = slice(0, 20_000), slice(20_000, None)
    rule = {d: np.bincount(age_bin[fit][density[fit] == d], minlength=4).argmax() for d in range(4)}
    empirical = np.mean([rule[d] == b for d, b in zip(density[score], age_bin[score], strict=True)])
    assert exact.accuracy.estimate == pytest.approx(empirical, abs=0.015)
    assert exact.majority == pytest.approx(10 / 36)  # ten screening ages in each of the first three bins
    assert exact.majority < exact.accuracy.estimate < 0.5
    assert exact.bound


def _force_bayes_accuracy(depth_mm: float, height_mm: float, view: str) -> float:
    """The generator's force formula integrated numerically: a reference independent of the Monte Carlo."""
    mean = 45.0 + 0.6 * depth_mm + 0.15 * (height_mm - 120.0)
    factors = np.linspace(1.05, 1.25, 401) if view == "MLO" else np.ones(1)
    edges = np.array([-np.inf, *FORCE_EDGES, np.inf])
    # P(bin) = E over the MLO factor u of P(lo <= u * (mean + noise) < hi)
    upper = norm.cdf((edges[1:, None] / factors - mean) / 12.0)
    lower = norm.cdf((edges[:-1, None] / factors - mean) / 12.0)
    return float((upper - lower).mean(axis=1).max())


def test_the_compression_force_ceiling_matches_the_generator_formula_integrated():
    ceiling = compression_force_ceiling(SPACE, patients=30, seed=3, replicates=400)
    reference = np.mean(
        [
            _force_bayes_accuracy(body.depth_mm, body.height_mm, view)
            for body in (patient_body(3, plan.index) for plan in plan_cohort(30, 3, [s.key for s in SYSTEMS]))
            for view in ("CC", "MLO")
        ]
    )
    assert ceiling.accuracy.estimate == pytest.approx(reference, abs=0.03)
    assert ceiling.accuracy.low <= ceiling.accuracy.estimate <= ceiling.accuracy.high
    assert ceiling.accuracy.estimate < 0.78  # the pretraining bar is out of reach by construction
    assert ceiling.majority < ceiling.accuracy.estimate
    assert ceiling.bound


def test_kvp_from_the_exposure_controls_inputs_is_not_a_bound_and_beats_the_majority_bin():
    ceiling = kvp_ceiling(SPACE, patients=20, seed=1, replicates=100)
    assert not ceiling.bound
    assert ceiling.accuracy.estimate > ceiling.majority + 0.2
    assert kvp_ceiling(SPACE, patients=20, seed=1, replicates=100) == ceiling  # seeded


def test_a_label_space_without_a_binned_field_is_refused_by_name():
    without_age = MetadataLabelSpace([SPACE.field(name) for name in SPACE.fields if name != "age"])
    with pytest.raises(ValueError, match="no field 'age'"):
        field_ceilings(without_age, patients=2, replicates=2)
    config = SPACE.to_config()
    for entry in config["fields"]:
        if entry["name"] == "kvp":
            entry.update(type="categorical", classes=["28", "30"])
            del entry["edges"], entry["units"], entry["range"]
    with pytest.raises(ValueError, match="'kvp' is CategoricalField, not binned"):
        kvp_ceiling(MetadataLabelSpace.from_config(config), patients=2, replicates=2)


def test_a_range_that_excludes_every_drawn_value_is_refused_and_one_that_cuts_some_drops_them():
    config = SPACE.to_config()
    force = next(entry for entry in config["fields"] if entry["name"] == "compression_force")
    force["range"] = [300, 400]  # the generator clips forces to 30-200 N
    with pytest.raises(ValueError, match=r"outside the field's range \(300.0, 400.0\)"):
        compression_force_ceiling(MetadataLabelSpace.from_config(config), patients=3, replicates=5)
    force["range"] = [1, 120]  # the top bin (>= 140 N) can no longer occur
    ceiling = compression_force_ceiling(MetadataLabelSpace.from_config(config), patients=10, replicates=50)
    assert ceiling.accuracy.estimate > compression_force_ceiling(SPACE, patients=10, replicates=50).accuracy.estimate


@pytest.mark.parametrize("patients, replicates, problem", [(0, 10, "patients is 0"), (5, 1, "replicates is 1")])
def test_too_small_a_sample_is_refused(patients, replicates, problem):
    with pytest.raises(ValueError, match=problem):
        compression_force_ceiling(SPACE, patients=patients, replicates=replicates)


def test_the_script_writes_a_report_and_says_what_is_wrong_with_its_arguments(tmp_path, capsys):
    out = tmp_path / "ceilings"
    assert main(["--patients", "6", "--replicates", "20", "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = {row["field"]: row for row in report["tables"]["ceilings"]}
    assert set(rows) == {"compression_force", "age", "kvp"}
    assert all(0.0 < row["Bayes accuracy"] <= 1.0 and not math.isnan(row["majority bin"]) for row in rows.values())
    bounds = [rows[name]["upper bound for pixels"] for name in ("compression_force", "age", "kvp")]
    assert bounds == ["yes", "yes", "no"]
    assert "compression_force" in capsys.readouterr().out
    assert "| age |" in (out / "report.md").read_text()

    assert main(["--fields", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "none")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
