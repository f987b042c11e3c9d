"""The learnability ladder: which subjects each rung trains and scores, how a case is scored, and a real
(tiny) run of every rung whose RESULTS.md section names its recipes, subjects and curves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from thrombus.ladder import (
    gate_rows,
    LadderError,
    Point,
    RungResult,
    load_ladder_config,
    read_results,
    render_results,
    rung_specs,
    run_ladder,
    score_case,
    write_results,
)
from thrombus.ladder_cli import rows_beside
from thrombus.samples import Subject

from test_training import CHANNELS, HARMONISE, TINY_MODEL, cohort, sheet_subjects  # noqa: F401  (cohort: fixture)


def subject(name: str, center: str, positive: bool) -> Subject:
    return Subject(name, center, "", {}, "1" if positive else "0", "", "")


def pool() -> list[Subject]:
    return [subject(f"{c}{i:03d}", c, i % 4 != 0) for c in "ABC" for i in range(12)]


def test_rungs_keep_scored_subjects_out_of_training_and_the_held_out_center_apart() -> None:
    specs = {s.name: s for s in rung_specs({"train_centers": ["A", "B"], "held_out": ["C"]}, pool(), seed=3)}
    assert specs["overfit"].train == specs["overfit"].scored == ("A001",)
    mono = specs["monocentric"]
    assert not set(mono.train) & set(mono.scored) and {s[0] for s in mono.train + mono.scored} == {"A", "B"}
    assert len(mono.scored) == 8 and sum(s.endswith(("000", "004", "008")) for s in mono.scored) == 2, "both labels, per center"
    mixed = specs["mixed"]
    assert not set(mixed.train) & set(mixed.scored) and {s[0] for s in mixed.scored} == {"C"}
    assert len(mixed.scored) == 6 and len([s for s in mixed.train if s[0] == "C"]) == 6 and set(mono.train + mono.scored) < set(mixed.train)
    loco = specs["loco"]
    assert len(loco.train) == 24 and loco.scored == tuple(f"C{i:03d}" for i in range(12))
    assert rung_specs({"train_centers": ["A", "B"], "held_out": ["C"]}, pool(), seed=3)[1] == mono, "fixed by the seed"
    with pytest.raises(LadderError, match="unknown"):
        rung_specs({"train_centers": ["A"], "held_out": ["Z"]}, pool(), seed=3)


def test_loco_may_train_on_its_own_centers_and_never_on_the_held_out_one() -> None:
    four = pool() + [subject(f"D{i:03d}", "D", i % 4 != 0) for i in range(12)]
    settings = {"train_centers": ["A", "B"], "held_out": ["C"], "rungs": ["monocentric", "loco", "loco_t2star"],
                "loco_t2star": {"kind": "loco", "train_centers": ["A", "B", "D"]}}
    specs = {s.name: s for s in rung_specs(settings, four, seed=3)}
    assert {s[0] for s in specs["loco_t2star"].train} == {"A", "B", "D"} and len(specs["loco_t2star"].train) == 36
    assert {s[0] for s in specs["loco"].train} == {"A", "B"}, "a rung of the loco kind keeps the plain loco as it was"
    assert specs["loco_t2star"].scored == specs["loco"].scored
    assert {s[0] for s in specs["monocentric"].train + specs["monocentric"].scored} == {"A", "B"}, "the other rungs keep theirs"
    with pytest.raises(LadderError, match="held-out or unknown centers: \\['C'\\]"):
        rung_specs({**settings, "loco_t2star": {"kind": "loco", "train_centers": ["A", "C"]}}, four, seed=3)
    with pytest.raises(LadderError, match="unknown kind 'loko'"):
        rung_specs({**settings, "loco_t2star": {"kind": "loko"}}, four, seed=3)


def test_a_subjects_rung_trains_and_scores_the_subjects_it_lists_and_refuses_others() -> None:
    settings = {"train_centers": ["A", "B"], "held_out": ["C"], "rungs": ["one_kind"],
                "one_kind": {"kind": "subjects", "train": ["A001", "B002", "A000"], "scored": ["A001", "C005"]}}
    (spec,) = rung_specs(settings, pool(), seed=3)
    assert spec.train == ("A001", "B002", "A000") and spec.scored == ("A001", "C005"), "in-sample scoring allowed"
    with pytest.raises(LadderError, match=r"unknown or unlabelled: \['Z999'\]"):
        rung_specs({**settings, "one_kind": {"kind": "subjects", "train": ["Z999"], "scored": ["A001"]}}, pool(), seed=3)
    with pytest.raises(LadderError, match="non-empty train and scored"):
        rung_specs({**settings, "one_kind": {"kind": "subjects", "train": ["A001"]}}, pool(), seed=3)


def test_a_case_is_detected_by_one_voxel_and_every_other_component_is_a_false_positive() -> None:
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[2:5, 2:5, 2:5] = 1
    probability = np.zeros((10, 10, 10), dtype=np.float32)
    probability[4, 4, 4] = 0.9  # one voxel of the clot
    probability[8, 8, 8] = 0.9  # a look-alike
    probability[8, 1, 1] = 0.4  # below the threshold
    scored = score_case(probability, truth, outside=0)
    assert scored == {"dice": pytest.approx(2 / 29), "detected": 1.0, "fp_components": 1.0}
    assert score_case(np.zeros_like(probability), truth, outside=0)["detected"] == 0.0


def test_ladder_runs_every_rung_and_renders_its_results(cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    config = tmp_path / "ladder.yaml"
    recipe = {"train": {"batch_size": 2, "slab_depth": 3, "patch_size": [32, 32], "learning_rate": 0.01,
                        "foreground_probability": 0.7, "foreground_prior": 0.01, "predict_tiled": True,
                        "augmentation": {"enabled": False}, "gmd": {"mode": "none"}}}
    config.write_text(yaml.safe_dump({"ladder": {
        "samples": str(cohort / "samples.tsv"), "train_centers": ["A", "B"], "held_out": ["C"],
        "overfit": {"iterations": 6, "eval_every": 3}, "monocentric": {"iterations": 4, "eval_every": 4},
        "mixed": {"iterations": 2, "eval_every": 2}, "loco": {"iterations": 4, "eval_every": 2},
        "recipes": {"tiny": recipe}}}))
    base = {"model": TINY_MODEL.to_dict(), "train": {}, "harmonise": HARMONISE}
    settings = load_ladder_config(config, base)
    # the committed row store already holds a row run elsewhere, imported with figures its page never showed
    store = tmp_path / "RESULTS.json"
    earlier = RungResult("older", "loco", ["A001"], ["C001"], [
        Point(200, None, None, 0.05, 0, 1, None, 0, None),
        Point(400, 61.0, None, 0.5, 1, 1, 0, 0, 0.0)], commit="0ld0ne", threads=2, machine="another machine",
        source="imported from an older RESULTS.md")
    write_results(store, [earlier])
    for name, segment in (("C000", "M2"), ("C001", "M1"), ("C002", "M1")):  # what a synthetic cohort writes beside its masks
        (cohort / "truth" / "C" / name / "truth.json").write_text(json.dumps({"thrombus": {"segment": segment}}))
    for name in ("C000", "C001", "C003"):  # registered ADC maps (1e-6 mm^2/s) for the lesion gate; C002 has none
        stack = nib.load(cohort / "results" / "harmonise" / "C" / name / "stack.nii.gz")
        data = np.asarray(stack.dataobj)
        adc = np.where(np.any(data != 0, axis=3), 800.0, 0.0)
        adc[data[..., 2] == -2.5] = 450.0  # the core beside the clot (nothing on the negative C003)
        (cohort / "results" / "register" / "C" / name).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(adc.astype(np.float32), stack.affine), cohort / "results" / "register" / "C" / name / "adc.nii.gz")
    results = run_ladder(settings, cohort, tmp_path / "out", seed=1, threads=1, commit="abc1234", rows=store)
    ran = [r for r in results if r.recipe == "tiny"]
    assert [(r.rung, len(r.points)) for r in ran] == [("overfit", 2), ("monocentric", 1), ("mixed", 1), ("loco", 2)]
    assert all(r.whole_slices is not None and r.commit == "abc1234" and r.machine and r.date for r in ran)
    assert all(p.cpu_seconds > 0 and 0.0 <= p.dice <= 1.0 for r in ran for p in r.points)
    assert sorted(read_results(store), key=lambda r: (r.rung, r.recipe)) == sorted(results, key=lambda r: (r.rung, r.recipe))
    assert not (tmp_path / "out" / "ladder.json").exists()  # the rows went to the store, checkpoints to out/
    loco = next(r for r in ran if r.rung == "loco")
    assert loco.gated is not None and loco.gated_subjects == 3 and loco.gated.negatives_with_fp == 0
    assert loco.gated.fp_components <= loco.points[-1].fp_components
    assert next(r for r in ran if r.rung == "monocentric").gated is None  # no ADC map among its scored subjects
    assert loco.segments == {"C000": "M2", "C001": "M1", "C002": "M1"}  # the negative C003 has none
    found = {name: int(dice > 0) for name, dice in loco.points[-1].per_case.items()}
    expected_segments = f"tiny: M1 {found['C001'] + found['C002']}/2, M2 {found['C000']}/1."
    text = render_results(results, {"command": "thrombus ladder", "config": str(config), "samples": "s.tsv", "seed": 1,
                                    "rows": str(store), "date": "2026-12-05", "recipes": {"tiny": recipe}})
    for needed in ("### overfit: 1 training subjects, 1 scored", "### loco: 8 training subjects, 4 scored", "| tiny | 4 |",
                   "read as whole slices", "overfit / tiny, monocentric / tiny, mixed / tiny, loco / tiny: commit abc1234", "| older | 400 | 1.0 | 0.50 | 1/1 | - | 0.0 | 0.50 @ 400 | 1.0 |",
                   "- loco / older: commit 0ld0ne, another machine, 2 torch threads; imported from an older RESULTS.md",
                   "Detected by the clot's arterial segment", expected_segments, "| tiny, with the gate | 3 |"):
        assert needed in text, needed

    # another training seed on the same subjects: a row beside the first, the seed in its checkpoint
    again = run_ladder({**settings, "only": ["tiny/loco"]}, cohort, tmp_path / "out", seed=1, threads=1, commit="abc1234",
                       rows=store, train_seed=7)
    assert [r.seed for r in again if (r.recipe, r.rung) == ("tiny", "loco")] == [None, 7]
    assert next(r for r in again if r.seed is None and r.rung == "loco" and r.recipe == "tiny") == loco  # kept as it was
    checkpoint = torch.load(tmp_path / "out" / "seed-7" / "tiny" / "loco" / "latest.pt", weights_only=True)
    assert checkpoint["sampler"]["seed"] == 7 + 2
    text = render_results(read_results(store), {"command": "thrombus ladder", "config": str(config), "samples": "s.tsv",
                                                "seed": 1, "rows": str(store), "date": "2026-12-06", "recipes": {"tiny": recipe}})
    for needed in ("The same subjects with other training seeds", "| tiny | 1 |", "| tiny | 7 |", "| tiny: mean of 2 | | | ",
                   "loco / tiny (training seed 7)"):
        assert needed in text, needed
    assert text.count("| tiny | 4 |") == 2  # monocentric's and loco's main rows: loco's table keeps the ladder seed's alone

    # a row run before the gate was scored gets its gated figures from the final weights it left behind
    before = [dataclasses.replace(r, gated=None, gated_subjects=None) if (r.recipe, r.rung) == ("tiny", "loco") else r
              for r in read_results(store)]
    write_results(store, before)
    gated = gate_rows({**settings, "only": ["tiny/loco"]}, cohort, tmp_path / "out", seed=1, threads=1, rows=store, commit="def5678")
    again_loco = next(r for r in gated if (r.recipe, r.rung, r.seed) == ("tiny", "loco", None))
    assert again_loco.gated == loco.gated and again_loco.gated_subjects == 3
    assert again_loco.source.endswith("gated figures computed at def5678 from its final weights")
    with pytest.raises(LadderError, match="no row .* or no checkpoint"):
        gate_rows({**settings, "only": ["tiny/mixed"]}, cohort, tmp_path / "elsewhere", seed=1, threads=1, rows=store)


def test_the_row_store_sits_beside_the_page_it_renders(tmp_path: Path) -> None:
    assert rows_beside("RESULTS.md", tmp_path) == Path("RESULTS.json")
    assert rows_beside(None, tmp_path) == tmp_path / "ladder.json"


def test_the_workflow_trains_with_the_recipe_its_time_to_quality_benchmark_names() -> None:
    """config.yaml's `train` section sets every key of the ladder recipe that RESULTS.md and bench_quality
    report as the current one, to the same value: the figures quoted are those of what the workflow runs."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "benchmarks"))
    from bench_quality import CURRENT

    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    recipe = yaml.safe_load((repo / "config" / "ladder.yaml").read_text())["ladder"]["recipes"][CURRENT]["train"]
    differing = {key: (value, config["train"].get(key)) for key, value in recipe.items() if config["train"].get(key) != value}
    assert not differing, f"config.yaml's train section differs from the ladder recipe {CURRENT}: {differing}"


def test_the_lesion_gate_decides_alike_on_a_case_cropped_and_read_slices_first() -> None:
    """The ladder gates predictions on the case's arrays (cropped to the brain box, slices first); the affine it
    gives them must make each component's side the one it has on the stack's grid."""
    from thrombus.inference.lesion_gate import GateDecision, case_affine, gate_components

    rng = np.random.default_rng(4)
    angle = np.radians(15)
    affine = np.array([[-0.9 * np.cos(angle), 0, 5 * np.sin(angle), 99.0], [0, 0.9, 0, -106.0],
                       [0.9 * np.sin(angle), 0, 5 * np.cos(angle), -92.0], [0, 0, 0, 1]])
    mask = rng.random((40, 36, 12)) > 0.97
    box = (slice(5, 35), slice(3, 33), slice(2, 11))
    mask[:5], mask[35:], mask[:, :3], mask[:, 33:], mask[:, :, :2], mask[:, :, 11:] = False, False, False, False, False, False
    decision = GateDecision(("right",), midline_x=float((affine @ [20, 18, 6, 1])[0]), lesion_ml=1.0)
    full = gate_components(mask, affine, decision)
    assert 0 < full.sum() < mask.sum(), "some components on each side"
    case = np.ascontiguousarray(np.transpose(mask[box], (2, 0, 1)))
    gated = gate_components(case, case_affine(affine, box), decision)
    assert np.array_equal(np.transpose(gated, (1, 2, 0)), full[box])
