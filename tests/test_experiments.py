"""Experiments and tables as the config declares them: merging, folds, and the checks that name the key."""

from __future__ import annotations

import pytest

from thrombus.experiments import check_tables, deep_merge, experiments, fold_centers, table_folds
from thrombus.samples import ConfigError, Subject

CHANNELS = ["susceptibility", "dwi", "adc", "flair"]


def _subject(name: str, center: str, thrombus: str = "1") -> Subject:
    return Subject(name, center, "/dicom", {"swi": "s"}, thrombus, "", "")


SUBJECTS = [_subject("A1", "A"), _subject("A2", "A", "0"), _subject("B1", "B"), _subject("C1", "C"), _subject("N1", "D", "")]


def _config(**overrides):
    config = {
        "model": {"base_width": 16, "architecture": "upattllstm"},
        "train": {"iterations": 100, "gmd": {"mode": "gradual", "p": 0.2}},
        "experiments": {
            "loco_gmd": {"split": "loco"},
            "loco_none": {"split": "loco", "train": {"gmd": {"mode": "none"}}, "folds": [2]},
            "mono": {"split": "monocentric", "model": {"architecture": "unet2d"}},
        },
        "evaluation": {"subsets": {"all": [], "no_diffusion": ["dwi", "adc"]}},
        "tables": {"t": {"experiments": ["loco_gmd", "loco_none"], "subsets": ["all", "no_diffusion"]}},
    }
    config.update(overrides)
    return config


def test_overrides_are_merged_key_by_key() -> None:
    found = experiments(_config(), SUBJECTS)
    assert found["loco_none"].train == {"iterations": 100, "gmd": {"mode": "none", "p": 0.2}}
    assert found["mono"].model == {"base_width": 16, "architecture": "unet2d"}
    assert found["loco_gmd"].train["gmd"]["mode"] == "gradual"


def test_one_fold_per_labelled_center() -> None:
    assert fold_centers(SUBJECTS) == ["A", "B", "C"]  # D has no labelled subject
    found = experiments(_config(), SUBJECTS)
    assert found["loco_gmd"].folds == (0, 1, 2) and found["loco_none"].folds == (2,)
    assert table_folds(_config(), found) == [("loco_gmd", 0), ("loco_gmd", 1), ("loco_gmd", 2), ("loco_none", 2)]


@pytest.mark.bad_input
def test_a_fold_that_does_not_exist_is_refused_listing_the_folds() -> None:
    config = _config(experiments={"x": {"split": "loco", "folds": [3]}})
    with pytest.raises(ConfigError, match=r"experiments\.x\.folds.*0: A, 1: B, 2: C"):
        experiments(config, SUBJECTS)


@pytest.mark.bad_input
def test_loco_needs_two_centers() -> None:
    with pytest.raises(ConfigError, match="two centers"):
        experiments(_config(), [_subject("A1", "A")])


def test_training_sections_leave_out_workflow_and_split_keys() -> None:
    config = _config(train={"iterations": 5, "resume": True, "val_fraction": 0.3})
    sections = experiments(config, SUBJECTS)["loco_gmd"].training_sections()
    assert sections["train"] == {"iterations": 5}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tables": {"t": {"experiments": ["ghost"]}}}, "tables.t names experiments ['ghost']"),
        ({"tables": {"t": {"experiments": ["loco_gmd"], "subsets": ["nope"]}}}, "tables.t names subsets ['nope']"),
        ({"evaluation": {"subsets": {"all": [], "x": ["perfusion"]}}}, "evaluation.subsets.x removes ['perfusion']"),
        ({"evaluation": {"subsets": {"none": CHANNELS}}}, "removes every channel"),
    ],
)
@pytest.mark.bad_input
def test_table_checks_name_the_key(change: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        check_tables(_config(**change), CHANNELS)


def test_deep_merge_does_not_touch_its_inputs() -> None:
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 3}})
    assert merged == {"a": {"b": 3, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_a_table_can_keep_the_fold_its_variants_share() -> None:
    """An ablation row of the method would pool every held-out center while the variants show one;
    `folds` keeps every row on the same fold, and a fold some experiment does not run is refused."""
    found = experiments(_config(), SUBJECTS)
    ablation = {"t": {"experiments": ["loco_gmd", "loco_none"], "subsets": ["all"], "folds": [2]}}
    assert table_folds(_config(tables=ablation), found) == [("loco_gmd", 2), ("loco_none", 2)]
    wrong = {"t": {"experiments": ["loco_gmd", "loco_none"], "folds": [0]}}
    with pytest.raises(ConfigError, match=r"tables\.t\.folds names folds \[0\] that experiment 'loco_none'"):
        table_folds(_config(tables=wrong), found)


def test_replicates_are_retrainings_with_the_seed_moved_and_tables_gather_them() -> None:
    """`replicates: 3` trains the experiment three times (seeds s, s+1, s+2) under names no declared
    experiment can have; a table naming the experiment needs all three, fold by fold."""
    from thrombus.experiments import replicates_of, split_replicate

    config = _config()
    config["experiments"]["loco_none"]["replicates"] = 3
    found = experiments(config, SUBJECTS)
    members = replicates_of("loco_none", found)
    assert [e.name for e in members] == ["loco_none", "loco_none-r2", "loco_none-r3"]
    assert [e.seed(7) for e in members] == [7, 8, 9] and {e.declared for e in members} == {"loco_none"}
    assert members[2].train == found["loco_none"].train and members[2].folds == (2,)
    assert table_folds(config, found) == [("loco_gmd", 0), ("loco_gmd", 1), ("loco_gmd", 2),
                                          ("loco_none", 2), ("loco_none-r2", 2), ("loco_none-r3", 2)]
    assert split_replicate("loco_none-r3") == ("loco_none", 3)
    for declared in ("loco_none", "loco_r2", "mono_r10"):  # the schema allows no "-" in a declared name
        assert split_replicate(declared) == (declared, 1)
