"""The workflow on the tiny synthetic cohort: DAG, lint, conversion geometry, privacy, reruns."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import pandas as pd
import numpy as np
import pytest

from browser import browser  # noqa: F401 (pytest fixture)
from conftest import REPO, smoke_config, snakemake, write_config
from thrombus.samples import read_sheet


def _truth(cohort: Path, center: str, subject: str) -> dict:
    return json.loads((cohort / "truth" / center / subject / "truth.json").read_text())


def test_lint(tiny_cohort: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.yaml", samples=str(tiny_cohort / "samples.tsv"))
    done = snakemake(tmp_path, "--lint", "--configfile", str(config), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Congratulations" in done.stdout + done.stderr


def test_dry_run_of_the_demo_config(tiny_cohort: Path, tmp_path: Path) -> None:
    """The shipped config builds the DAG (with the tiny cohort's sheet in place of the demo one)."""
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "config.yaml"),
                     "--config", f"samples={tiny_cohort / 'samples.tsv'}", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    subjects = len(read_sheet(tiny_cohort / "samples.tsv"))  # one conversion job per subject
    assert _job_counts(done.stdout)["convert"] == subjects, done.stdout[-2000:]


def _job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the `Job stats` table of a dry run."""
    table = dry_run_output.split("Job stats:")[1].split("Reasons:")[0]
    return {parts[0]: int(parts[1]) for parts in (line.split() for line in table.splitlines())
            if len(parts) == 2 and parts[1].isdigit()}


def _started(output: str) -> dict[str, int]:
    """Rule -> number of jobs a real run started (its job headers; the `Job stats` table printed before a
    checkpoint ran still lists jobs the updated DAG drops)."""
    found = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", output, flags=re.M)
    return {rule: found.count(rule) for rule in set(found)}


@pytest.mark.parametrize("overlays, trainings", [((), 1), (("paper.yaml",), 16), (("paper.yaml", "paper_gpu.yaml"), 16)])
def test_shipped_configs_train_what_they_say(tiny_cohort: Path, tmp_path: Path, overlays: tuple[str, ...], trainings: int) -> None:
    """config.yaml keeps `make demo` to one training; config/paper.yaml lays the paper's 16 over it, and
    config/paper_gpu.yaml changes how long they train, not which (an overlay can only add experiments and
    tables, so a slip in any of the files shows here)."""
    configs = [str(REPO / "config" / name) for name in ("config.yaml", *overlays)]
    done = snakemake(tmp_path, "-n", "--quiet", "rules", "host", "reason", "--configfile", *configs,
                     "--config", f"samples={tiny_cohort / 'samples.tsv'}", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = _job_counts(done.stdout + done.stderr)
    assert counts["train"] == trainings, counts
    assert counts["tables"] == (4 if overlays else 1), counts


def test_converted_geometry_matches_the_generator(tiny_cohort: Path, tiny_run: Path) -> None:
    sheet = read_sheet(tiny_cohort / "samples.tsv")
    checked = 0
    for _, row in sheet.iterrows():
        truth = _truth(tiny_cohort, row["center"], row["subject"])
        for sequence, expected in truth["sequences"].items():
            image = nib.load(tiny_run / "results" / "convert" / row["center"] / row["subject"] / f"{sequence}.nii.gz")
            assert list(image.shape) == expected["shape"], (row["subject"], sequence)
            np.testing.assert_allclose(image.header.get_zooms()[:3], expected["spacing_mm"], atol=1e-3)
            assert "".join(nib.aff2axcodes(image.affine)) == expected["orientation"]
            checked += 1
        reference = nib.load(tiny_run / "results" / "convert" / row["center"] / row["subject"] / f"{truth['reference']}.nii.gz")
        mask = nib.load(tiny_cohort / "truth" / row["center"] / row["subject"] / "thrombus.nii.gz")
        assert reference.shape == mask.shape
        np.testing.assert_allclose(reference.affine, mask.affine, atol=1e-3)
    assert checked >= 20


def test_no_identifier_reaches_any_output(tiny_cohort: Path, tiny_run: Path) -> None:
    """Every fake name, ID, birth date, accession number and institution stays out of results and logs
    (ours and Snakemake's): NIfTI headers and extensions, sidecars, records, tables, PNG metadata."""
    identifiers = json.loads((tiny_cohort / "identifiers.json").read_text())["subjects"]
    needles = {str(v).encode() for person in identifiers for k, v in person.items() if k != "subject" and len(str(v)) >= 4}
    needles |= {part.encode() for person in identifiers for part in person["PatientName"].split("^") if len(part) >= 4}
    needles.discard(b"SYNTH")
    files = [p for d in ("results", "logs", ".snakemake/log") for p in (tiny_run / d).rglob("*") if p.is_file()]
    assert len(files) > 50
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)[:4096]  # the NIfTI header and extensions
        leaked = [n.decode() for n in needles if n in data]
        assert not leaked, f"{path} contains {leaked}"


@pytest.mark.bad_input
def test_one_scan_under_two_pseudonyms_is_listed(tiny_run: Path) -> None:
    """N001 is A's first subject copied to a folder of its own (the sheet check cannot see it): the
    conversion's fingerprints find it, and source links keep both folders out of the job's command."""
    table = pd.read_csv(tiny_run / "results" / "qc" / "duplicate_scans.tsv", sep="\t", dtype=str)
    (row,) = table.itertuples()
    assert row.subjects.split(", ")[1] == "N001" and row.centers == "A" and row.labelled == "1"
    assert "SeriesInstanceUID" in row.evidence and "identical voxels" in row.evidence
    links = list((tiny_run / "results" / "dicom" / "A" / "N001").iterdir())
    assert links and all(link.is_symlink() for link in links)


def test_prediction_mode_takes_new_subjects_from_dicom_to_masks(tiny_run: Path, tmp_path: Path) -> None:
    """A sheet of unlabelled subjects and a checkpoint, with config.yaml's experiments and tables left as
    they are: conversion, preprocessing and prediction run, nothing trains, no table is made, and the mask
    is the one the labelled run predicted for the same subject with the same model."""
    used = json.loads((tiny_run / "results" / "predictions" / "A" / "N001" / "record.json").read_text())["checkpoint"]
    model = tiny_run / used  # the model the labelled run predicted N001 with (inference.experiment / fold)
    rows = read_sheet(tiny_run / "samples.tsv")
    sheet = tmp_path / "samples.tsv"
    bids_rows = read_sheet(_as_bids(tiny_run / "results" / "convert" / "A" / "N001", tmp_path, "N901"))
    pd.concat([rows[rows["subject"] == "N001"], bids_rows]).to_csv(sheet, sep="\t", index=False)
    config = write_config(tmp_path / "config.yaml", **smoke_config(samples=str(sheet), inference={"checkpoint": str(model)}))
    done = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "local"), "--configfile", str(config), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    mask = tmp_path / "results" / "predictions" / "A" / "N001" / "mask.nii.gz"
    expected = tiny_run / "results" / "predictions" / "A" / "N001" / "mask.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(mask).dataobj), np.asarray(nib.load(expected).dataobj))
    assert not (tmp_path / "results" / "models").exists() and not (tmp_path / "results" / "tables").exists()
    readout = json.loads((mask.parent / "measurements.json").read_text())
    table = pd.read_csv(tmp_path / "results" / "predictions" / "A" / "measurements.tsv", sep="\t")
    assert list(table["subject"]) == ["N001", "N901"] and bool(table["found"][0]) == (readout["thrombus"] is not None)
    assert (mask.parent / "thrombus_seg.dcm").exists() and (mask.parent / "overview.png").exists()
    from test_bids import validate

    assert list((tmp_path / "results" / "bids" / "sub-N001" / "anat").glob("*_label-thrombus_mask.nii.gz"))
    assert validate(tmp_path / "results" / "bids")["errors"] == []
    # the same scans given as a BIDS dataset: the same mask, and no DICOM SEG (no DICOM to reference)
    from_bids = tmp_path / "results" / "predictions" / "A" / "N901"
    np.testing.assert_array_equal(np.asarray(nib.load(from_bids / "mask.nii.gz").dataobj), np.asarray(nib.load(mask).dataobj))
    assert (from_bids / "overview.png").exists() and not (from_bids / "thrombus_seg.dcm").exists()
    assert "N001, N901" in (tmp_path / "results" / "qc" / "duplicate_scans.tsv").read_text()


#: The pipeline's sequences as BIDS names (datatype folder, entities and suffix).
BIDS_NAMES = {"swi": "swi/{s}_swi", "t2star": "anat/{s}_T2starw", "dwi": "dwi/{s}_dwi", "adc": "dwi/{s}_adc",
              "flair": "anat/{s}_FLAIR", "t1": "anat/{s}_T1w"}


def _as_bids(converted: Path, root: Path, subject: str) -> Path:
    """A subject's converted sequences laid out as a BIDS dataset, and the sheet `thrombus sheet --bids` writes."""
    from thrombus.cli import main

    for image in converted.glob("*.nii.gz"):
        sequence = image.name.removesuffix(".nii.gz")
        target = root / "bids" / f"sub-{subject}" / f"{BIDS_NAMES[sequence].format(s=f'sub-{subject}')}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
        shutil.copy(image.with_name(f"{sequence}.json"), target.with_name(target.name.replace(".nii.gz", ".json")))
    assert main(["sheet", "--bids", str(root / "bids"), "--center", "A", "--out", str(root / "bids.tsv")]) == 0
    return root / "bids.tsv"


@pytest.mark.fault
def test_second_run_has_nothing_to_do(tiny_cohort: Path, tiny_run: Path) -> None:
    done = snakemake(tiny_run, "-n", "--configfile", str(tiny_run / "config.yaml"), timeout=120)
    assert done.returncode == 0
    assert "Nothing to be done" in done.stdout + done.stderr


@pytest.mark.fault
def test_a_moved_project_reruns_nothing(tiny_run: Path, tmp_path: Path) -> None:
    """The whole run moved elsewhere with its sheet (N001's DICOM inside it, the cohort's outside): no
    rule parameter holds a path that moved, the source links still lead where the sheet says."""
    moved = tmp_path / "moved project"
    shutil.copytree(tiny_run, moved, symlinks=True)
    sheet = (moved / "samples.tsv").read_text().replace(str(tiny_run), str(moved))
    (moved / "samples.tsv").write_text(sheet)
    config = (moved / "config.yaml").read_text().replace(str(tiny_run), str(moved))
    (moved / "config.yaml").write_text(config)
    done = snakemake(moved, "-n", "--configfile", str(moved / "config.yaml"), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Nothing to be done" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


def test_a_center_sending_a_new_labelled_subject_retrains_nothing(tiny_run: Path, tmp_path: Path) -> None:
    """A labelled subject added to center C (a copy of C's first subject, from its own folder): it is
    converted, preprocessed, joins the split files as a test subject of the fold holding out C, and is
    scored there; no model trains or recalibrates, and the other folds' evaluations are redone only
    because the split file they read grew."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, symlinks=True)
    rows = read_sheet(copy / "samples.tsv")
    new = rows[(rows["center"] == "C") & (rows["thrombus"] == "1")].iloc[0].copy()
    shutil.copytree(new["dicom_dir"], tmp_path / "incoming" / "C901")
    new["subject"], new["dicom_dir"] = "C901", str(tmp_path / "incoming" / "C901")
    pd.concat([rows, new.to_frame().T], ignore_index=True).to_csv(copy / "samples.tsv", sep="\t", index=False)
    (copy / "samples.tsv").write_text((copy / "samples.tsv").read_text().replace(str(tiny_run), str(copy)))
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace(str(tiny_run), str(copy)))
    models = {path: path.read_bytes() for path in (copy / "results" / "models").rglob("*.pt")}
    calibrations = {path: path.read_bytes() for path in (copy / "results" / "models").rglob("postprocessing.json")}
    done = snakemake(copy, "--profile", str(REPO / "profiles" / "local"), "--configfile", str(copy / "config.yaml"), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = _started(done.stdout + done.stderr)
    assert "train" not in ran and "calibrate" not in ran, ran
    assert ran["convert"] == 1 and ran["splits"] >= 1 and ran["infer"] >= 1, ran
    assert all(path.read_bytes() == data for path, data in {**models, **calibrations}.items())
    for split in (copy / "results" / "splits").glob("*.json"):
        document = json.loads(split.read_text())
        assert document["added"] == ["C901"]
        assert all(("C901" in fold["test"]) == (fold["test_centers"] == ["C"]) for fold in document["folds"])
        assert not any("C901" in fold["train"] + fold["val"] for fold in document["folds"])
    scored = pd.concat([pd.read_csv(path, sep="\t") for path in (copy / "results" / "evaluation").rglob("*.tsv")])
    assert "C901" in set(scored["subject"])


def test_one_center_can_be_redone_alone(tiny_cohort: Path, tiny_run: Path, tmp_path: Path) -> None:
    """`--config center=B --forcerun convert` redoes center B and touches nothing of A and C (B: the center
    without the unlabelled subject, two subjects to redo instead of three).

    On a copy of the run: the other tests compare against the shared run's outputs.
    """
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)

    def stamps() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for d in ("results", "logs") for p in (run / d).rglob("*") if p.is_file()}

    before = stamps()
    done = snakemake(run, "--profile", str(REPO / "profiles" / "local"), "--configfile", str(run / "config.yaml"),
                     "--config", "center=B", "--forcerun", "convert", "--", "preprocess", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    after = stamps()
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed, "nothing was redone"
    def centers_of(path: Path) -> set[str]:
        relative = path.relative_to(run)
        return {"A", "B", "C"} & ({*relative.parts[:-1], relative.name.split(".")[0]})

    others = sorted(str(p) for p in changed if centers_of(p) - {"B"})
    assert not others, others[:5]
    assert any("results/harmonise/B/" in str(p) for p in changed)


@pytest.mark.bad_input
def test_bad_subject_fails_alone_with_keep_going(tiny_cohort: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    sheet = read_sheet(cohort / "samples.tsv")
    victim = sheet[sheet["swi"].str.match(r"^\d")].iloc[0]
    folder = Path(victim["dicom_dir"]) / victim["swi"]
    slices = sorted(folder.iterdir())
    slices[len(slices) // 2].unlink()
    config = write_config(tmp_path / "config.yaml", samples=str(cohort / "samples.tsv"))
    done = snakemake(tmp_path, "--cores", "2", "--keep-going", "--configfile", str(config), "--", "convert_all", timeout=900)
    assert done.returncode != 0
    log = (tmp_path / "logs" / "convert" / victim["center"] / f"{victim['subject']}.log").read_text()
    assert f"center {victim['center']}, subject {victim['subject']}, swi" in log and "a slice is missing" in log
    link = f"results/dicom/{victim['center']}/{victim['subject']}/swi"
    assert link in log and str(folder) not in log  # the pseudonym's link, not the source path
    # the subject's folder is written whole or not at all: not even its good sequences are left
    assert not (tmp_path / "results" / "convert" / victim["center"] / victim["subject"]).exists()
    others = [r for _, r in sheet.iterrows() if r["subject"] != victim["subject"]]
    for row in others:
        for sequence in ("swi", "t2star", "dwi", "adc", "flair", "t1"):
            if row[sequence]:
                assert (tmp_path / "results" / "convert" / row["center"] / row["subject"] / f"{sequence}.nii.gz").exists()
    # no temporary of ours left (Snakemake keeps .snakemake_timestamp in directory outputs)
    leftovers = [p for p in (tmp_path / "results").rglob(".*") if p.name != ".snakemake_timestamp"]
    assert not leftovers, leftovers


def test_tables_and_figures_of_the_smoke_run(tiny_cohort: Path, tiny_run: Path) -> None:
    """`all` trains, predicts with every subset, evaluates and writes each table in three formats."""
    import pandas as pd
    import yaml

    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    tables = tiny_run / "results" / "tables"
    for name, settings in smoke["tables"].items():
        for suffix in (".csv", ".md", ".tex", "_per_center.csv", "_per_center.md", "_per_center.tex", "_subjects.tsv"):
            assert (tables / f"{name}{suffix}").stat().st_size > 0, (name, suffix)
        for figure in ("boxplots", "overlays"):
            assert (tables / "figures" / f"{name}_{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        markdown = (tables / f"{name}.md").read_text()
        assert "SMOKE RUN" in markdown and "1 voxel" in markdown, markdown
        overall = pd.read_csv(tables / f"{name}.csv")
        expected = [(e, s) for e in settings["experiments"] for s in settings["subsets"]]
        assert list(zip(overall["experiment"], overall["subset"])) == expected
        rows = pd.read_csv(tables / f"{name}_subjects.tsv", sep="\t")
        assert set(rows["subset"]) == set(settings["subsets"])
    # leave one center out: every labelled subject is tested once per subset, on its own center's fold
    loco = pd.read_csv(tables / "multicentric_subjects.tsv", sep="\t")
    sheet = read_sheet(tiny_cohort / "samples.tsv")
    labelled = sheet[sheet["thrombus"].isin(["0", "1"])]
    assert sorted(loco[loco["subset"] == "all"]["subject"]) == sorted(labelled["subject"])
    per_center = pd.read_csv(tables / "multicentric_per_center.csv")
    assert set(per_center["center"]) == {*labelled["center"], "all"}


def test_every_job_measured_its_peak_and_stayed_under_its_request(tiny_run: Path) -> None:
    """Snakemake's benchmark file of every job of the run: the fixed requests cover what was measured."""
    import pandas as pd

    from thrombus.resources import PEAK_MB, request_mb

    folder = tiny_run / "logs" / "benchmarks"
    rules = {path.name for path in folder.iterdir() if path.is_dir()}
    assert {"convert", "skullstrip", "register", "brainmask", "harmonise", "train", "calibrate", "infer", "evaluate",
            "tables"} <= rules
    for path in folder.rglob("*.tsv"):
        rule = path.relative_to(folder).parts[0]
        peak = float(pd.read_csv(path, sep="\t")["max_rss"].iloc[0])
        assert peak >= 0, (path, peak)  # Snakemake samples memory periodically: a sub-second job may show only its shell
        if rule in PEAK_MB:
            assert peak < request_mb(rule), f"{path}: peak {peak:.0f} MB over the request of {request_mb(rule)} MB"


def test_missing_sequences_are_removed_at_test_time(tiny_run: Path) -> None:
    """The subset without susceptibility really ran without it: its availability says so."""
    records = list((tiny_run / "results" / "heldout" / "loco_gmd").glob("fold*/no_susceptibility/*/*/record.json"))
    assert records
    for path in records:
        record = json.loads(path.read_text())
        assert record["availability"]["susceptibility"] == 0, path
        full = json.loads(Path(str(path).replace("/no_susceptibility/", "/all/")).read_text())
        assert full["availability"]["susceptibility"] == 1
    for path in (tiny_run / "results" / "models").glob("*/fold*/model_card.json"):
        card = json.loads(path.read_text())
        assert card["channels"] == ["susceptibility", "dwi", "adc", "flair"] and "postprocessing" not in card
        post = json.loads((path.parent / "postprocessing.json").read_text())  # the calibrate rule's, on the fold's validation subjects
        assert post["chosen_on"] == card["training"]["split"]["val"], (post, card["training"]["split"])


@pytest.fixture(scope="module")
def report(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Snakemake's HTML report of the tiny run."""
    report = tmp_path_factory.mktemp("report") / "report.html"
    done = snakemake(tiny_run, "--configfile", str(tiny_run / "config.yaml"), "--report", str(report), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return report


def test_html_report_holds_the_tables_and_no_identifier(tiny_cohort: Path, report: Path) -> None:
    html = report.read_text(errors="replace")
    for name in ("multicentric.html", "multicentric_per_center.html", "ablation_overlays.png", "learning_curves.png",
                 "Matching rule", "preprocess.png", "overview.png"):
        assert name in html, name
    identifiers = json.loads((tiny_cohort / "identifiers.json").read_text())["subjects"]
    for person in identifiers:
        for part in person["PatientName"].split("^"):
            if len(part) >= 4 and part != "SYNTH":
                # whole words: the report's bundled licence texts say "THEORY", a fake name may be "THEO"
                assert not re.search(rf"\b{re.escape(part)}\b", html), part


def test_html_report_shows_every_table_and_picture_in_a_browser(report: Path, tiny_run: Path, browser) -> None:
    """Every result of every category, opened as a reader would (category, then each label toggle, then
    the eye), shows its content: tables with rows and their notes, pictures that decoded."""
    from report_browser import open_every_result

    shown = open_every_result(browser, report)
    by_category = {}
    for item in shown:
        by_category.setdefault(item["category"], []).append(item)
    assert {"Tables", "Figures", "QC", "Training", "Predictions"} <= set(by_category), sorted(by_category)
    broken = [item for item in shown if not item["ok"]]
    assert not broken, broken
    tables = [item for item in by_category["Tables"] if item["kind"] == "table"]
    assert len(tables) >= 2 and all(item["rows"] >= 1 and item["notes"] for item in tables), by_category["Tables"]
    assert len(by_category["Training"]) == len(list((tiny_run / "results" / "models").rglob("learning_curves.png")))
    files = {item["file"] for item in shown}
    assert {"multicentric.html", "multicentric_per_center.html", "overview.png", "learning_curves.png", "preprocess.png"} <= files, files
    assert all(item["kind"] == "image" for c in ("Figures", "QC", "Training", "Predictions") for item in by_category[c])


def test_new_subject_without_label_is_predicted_not_trained_on(tiny_run: Path) -> None:
    """The unlabelled row of the run's sheet (new data) is predicted by the configured model and never split."""
    folder = tiny_run / "results" / "predictions" / "A" / "N001"
    record = json.loads((folder / "record.json").read_text())
    assert record["checkpoint"] == "results/models/loco_gmd/fold0/best.pt"
    assert nib.load(folder / "mask.nii.gz").shape == nib.load(folder / "probability.nii.gz").shape
    for split in ("loco", "monocentric"):
        document = json.loads((tiny_run / "results" / "splits" / f"{split}.json").read_text())
        assert "N001" not in document["subjects"]
    assert not list((tiny_run / "results" / "heldout").rglob("N001"))


def test_replicated_experiments_train_once_per_seed(tiny_cohort: Path, tmp_path: Path) -> None:
    """config/paper_replicates.yaml trains GMD and no dropout three times on every fold, seeds s, s+1,
    s+2, and the dropout table gathers all of them."""
    # paper_partial.yaml, which the overlay is meant to go with, names fold 3: the tiny cohort has three centers
    configs = [str(REPO / "config" / name) for name in ("config.yaml", "paper.yaml", "paper_replicates.yaml")]
    done = snakemake(tmp_path, "-n", "-p", "--configfile", *configs, "--config", f"samples={tiny_cohort / 'samples.tsv'}",
                     "--", "results/tables/dropout.md", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"--out-dir results/models/([\w-]+)/fold(\d+) .*?--seed (\d+)", done.stdout)
    trained = [job for job in found if job[0].split("-r")[0] in ("loco_gmd", "loco_no_dropout")]
    folds = sorted({fold for _, fold, _ in trained})
    assert len(trained) == 2 * 3 * len(folds) and len(folds) >= 2, done.stdout[-3000:]
    assert len(found) - len(trained) == len(folds)  # plain dropout, not replicated, once a fold
    for declared in ("loco_gmd", "loco_no_dropout"):
        seeds = {name: int(seed) for name, _, seed in trained if name.split("-r")[0] == declared}
        base = seeds[declared]
        assert seeds == {declared: base, f"{declared}-r2": base + 1, f"{declared}-r3": base + 2}
