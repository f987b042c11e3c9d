"""Co-registration on real data: mutual information improves and brain masks overlap after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from thrombus.preprocess.register import RegistrationOptions, register_file

ISLES = "nifti/isles22_sub-strokecase0009/rawdata/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_"
TCGA = "nifti/tcga_fg_6692_glioma/TCGA-FG-6692_"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _nonzero_mask(image: Path, target: Path) -> Path:
    img = nib.load(image)
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine), target)
    return target


@pytest.mark.realdata
@pytest.mark.parametrize("backend", ["ants", "greedy"])
def test_isles_flair_to_dwi(realdata: Path, tmp_path: Path, backend: str) -> None:
    """FLAIR 0.45x0.45x5 mm onto DWI 2 mm (both skull-stripped), with each backend: MI improves, brain masks overlap."""
    from thrombus.preprocess.register import carry_mask

    dwi, flair = realdata / f"{ISLES}dwi.nii.gz", realdata / f"{ISLES}flair.nii.gz"
    fixed_mask = _nonzero_mask(dwi, tmp_path / "dwi_mask.nii.gz")
    record = register_file(
        dwi, flair, tmp_path / "flair.nii.gz", tmp_path / "flair.mat", RegistrationOptions(backend=backend, threads=2, seed=3),
        "strokecase0009", "ISLES", "flair", fixed_mask=fixed_mask,
    )
    assert record["qc"]["mi_after"] > record["qc"]["mi_before"]
    assert record["qc"]["usable"] and not record["qc"]["flags"]
    carried = carry_mask(_nonzero_mask(flair, tmp_path / "flair_mask.nii.gz"), dwi, tmp_path / "carried.nii.gz", tmp_path / "flair.mat")
    overlap = dice(np.asarray(nib.load(carried).dataobj) > 0, np.asarray(nib.load(fixed_mask).dataobj) > 0)
    assert overlap >= 0.9
    warped = nib.load(tmp_path / "flair.nii.gz")
    assert warped.shape == nib.load(dwi).shape
    np.testing.assert_allclose(warped.affine, nib.load(dwi).affine, atol=1e-4)


@pytest.mark.realdata
@pytest.mark.parametrize("sequence", ["T2", "FLAIR"])
def test_tcga_to_t1c_across_grids(realdata: Path, tmp_path: Path, sequence: str) -> None:
    """TCGA T2 and FLAIR (own grids, 5.5 mm slices, misaligned by ~15 mm / ~10 deg) onto T1c: MI
    improves and the moving image's own HD-BET mask, carried onto T1c, overlaps T1c's reference mask."""
    from thrombus.preprocess.register import carry_mask
    from thrombus.preprocess.skullstrip import HDBetOptions, skullstrip_file

    record = register_file(
        realdata / f"{TCGA}T1c.nii.gz", realdata / f"{TCGA}{sequence}.nii.gz", tmp_path / "out.nii.gz",
        tmp_path / "out.mat", RegistrationOptions(threads=2, seed=5), "FG6692", "TCGA", sequence.lower(),
        fixed_mask=realdata / f"{TCGA}T1c_hdbet_brainmask_from_brainles_tests.nii.gz",
    )
    # aligned pairs reach MI ~0.22-0.25 here; the identity start is ~0.03 and a wrong optimum ~0.07
    assert record["qc"]["mi_after"] > 0.18 > record["qc"]["mi_before"]
    assert record["qc"]["usable"]
    native = tmp_path / "native_mask.nii.gz"
    skullstrip_file(realdata / f"{TCGA}{sequence}.nii.gz", native, None, HDBetOptions(threads=2))
    carried = carry_mask(native, realdata / f"{TCGA}T1c.nii.gz", tmp_path / "carried.nii.gz", tmp_path / "out.mat")
    reference = realdata / f"{TCGA}T1c_hdbet_brainmask_from_brainles_tests.nii.gz"
    overlap = dice(np.asarray(nib.load(carried).dataobj) > 0, np.asarray(nib.load(reference).dataobj) > 0)
    assert overlap >= 0.9, overlap


def _shifted(image: Path, target: Path, mm: float) -> Path:
    """The same scan with its header moved `mm` along x: a series whose scanner position is far off."""
    img = nib.load(image)
    affine = img.affine.copy()
    affine[0, 3] += mm
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header), target)
    return target


@pytest.mark.realdata
@pytest.mark.bad_input
@pytest.mark.parametrize("backend", ["ants", "greedy"])
def test_heads_far_apart_start_from_their_centres(realdata: Path, tmp_path: Path, backend: str) -> None:
    """TCGA T2 moved 32 mm off T1c: ANTs' identity start stayed in a local optimum (MI 0.056 -> 0.057,
    "usable", no flag); the centre start reaches the MI of the unmoved pair (~0.25) and the large
    translation is flagged for a reviewer. Greedy's identity start runs off instead (26 degrees, MI
    0.028, heads 4 mm apart after it), which the same flags catch; its centre start lands as ANTs' does."""
    moving = _shifted(realdata / f"{TCGA}T2.nii.gz", tmp_path / "t2_shifted.nii.gz", 32.0)
    args = (realdata / f"{TCGA}T1c.nii.gz", moving, tmp_path / "out.nii.gz", tmp_path / "out.mat")
    mask = realdata / f"{TCGA}T1c_hdbet_brainmask_from_brainles_tests.nii.gz"
    record = register_file(*args, RegistrationOptions(backend=backend, threads=2, seed=5), "FG6692", "TCGA", "t2", fixed_mask=mask)
    qc = record["qc"]
    assert qc["start"] == "centres" and qc["centre_gap_mm"] > 30
    assert qc["mi_after"] > 0.18 > qc["mi_before"] and qc["usable"]
    assert qc["flags"] == [f"translation {qc['translation_mm']:.1f} mm above 20.0 mm"]

    stuck = RegistrationOptions(backend=backend, threads=2, seed=5, centre_start_mm=1000.0)  # the identity start alone, as before
    record = register_file(*args, stuck, "FG6692", "TCGA", "t2", fixed_mask=mask)
    assert record["qc"]["mi_after"] < 0.1 and not record["qc"]["usable"]
    if backend == "ants":
        assert any("still" in flag and "apart after registration" in flag for flag in record["qc"]["flags"])
    else:
        assert "mutual information decreased: registration likely failed" in record["qc"]["flags"]


def test_failure_flags_need_a_far_start_or_a_poor_mask_overlap() -> None:
    """An aligned pair that started aligned moves MI little and is fine; far apart it is not."""
    from thrombus.preprocess.register import Registration, failure_flags

    options = RegistrationOptions()
    near = Registration(Path("t.mat"), None, 0.229, 0.244, 0.9, 0.5, [], centre_gap_mm=0.9)  # ISLES FLAIR to DWI
    assert failure_flags(near, options) == []
    far = Registration(Path("t.mat"), None, 0.0558, 0.0571, 12.6, 17.8, [], centre_gap_mm=35.1)
    assert "barely moved" in failure_flags(far, options)[0]
    near.mask_dice = 0.6
    assert failure_flags(near, options) == ["brain masks overlap with Dice 0.60 after registration (< 0.8)"]


@pytest.mark.realdata
@pytest.mark.parametrize("backend", ["ants", "greedy"])
def test_deterministic_mode_is_bit_identical_across_processes(realdata: Path, tmp_path: Path, backend: str) -> None:
    script = (
        "import sys; from thrombus.preprocess.register import RegistrationOptions, register_file;"
        f"register_file('{realdata / ISLES}dwi.nii.gz', '{realdata / ISLES}flair.nii.gz', sys.argv[1] + '.nii.gz',"
        f" sys.argv[1] + '.mat', RegistrationOptions(backend={backend!r}, deterministic=True, seed=11), 's', 'c', 'flair')"
    )
    # side by side, as the workflow runs deterministic (one-thread) registrations
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / run)]) for run in ("a", "b")]
    assert [run.wait(timeout=600) for run in runs] == [0, 0]
    assert (tmp_path / "a.mat").read_bytes() == (tmp_path / "b.mat").read_bytes()
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj)
    assert np.array_equal(a, b)


@pytest.mark.bad_input
def test_volume_checks_name_subject_and_sequence(tmp_path: Path) -> None:
    from thrombus.nifti import VolumeError

    good = np.random.default_rng(0).random((12, 12, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(good, np.eye(4)), tmp_path / "ref.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(good), np.eye(4)), tmp_path / "zero.nii.gz")
    with pytest.raises(VolumeError, match="center C1, subject S1, flair: .*all zeros"):
        register_file(tmp_path / "ref.nii.gz", tmp_path / "zero.nii.gz", tmp_path / "o.nii.gz", tmp_path / "o.mat",
                      RegistrationOptions(), "S1", "C1", "flair")
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.bad_input
def test_field_of_view_outside_the_reference_is_refused(tmp_path: Path) -> None:
    from thrombus.preprocess.register import RegistrationError

    rng = np.random.default_rng(1)
    volume = np.zeros((24, 24, 16), dtype=np.float32)
    volume[6:18, 6:18, 4:12] = 1.0 + rng.random((12, 12, 8))
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "ref.nii.gz")
    far = np.diag([2.0, 2.0, 2.0, 1.0])
    far[:3, 3] = (0.0, 0.0, 300.0)  # the same head, 30 cm away in scanner coordinates
    nib.save(nib.Nifti1Image(volume, far), tmp_path / "far.nii.gz")
    with pytest.raises(RegistrationError, match="subject S1, dwi: .*does not overlap the reference"):
        register_file(tmp_path / "ref.nii.gz", tmp_path / "far.nii.gz", tmp_path / "o.nii.gz", tmp_path / "o.mat",
                      RegistrationOptions(), "S1", "C1", "dwi")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.mat").exists()


@pytest.mark.bad_input
def test_adc_inherits_a_failed_dwi_registration(tmp_path: Path) -> None:
    """ADC moves with the DWI transform; when QC failed the DWI registration, the ADC is unusable too."""
    import json

    rng = np.random.default_rng(2)
    volume = np.zeros((24, 24, 16), dtype=np.float32)
    volume[6:18, 6:18, 4:12] = 1.0 + rng.random((12, 12, 8))
    for name in ("ref", "adc"):
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / f"{name}.nii.gz")
    from thrombus.preprocess.register import import_ants

    ants = import_ants(1)
    ants.write_transform(ants.create_ants_transform(dimension=3), str(tmp_path / "dwi.mat"))
    (tmp_path / "dwi.json").write_text(json.dumps({"qc": {"usable": False, "flags": ["mutual information decreased"]}}))
    record = register_file(tmp_path / "ref.nii.gz", tmp_path / "adc.nii.gz", tmp_path / "o.nii.gz", tmp_path / "o.mat",
                           RegistrationOptions(), "S1", "C1", "adc", reuse_transform=tmp_path / "dwi.mat",
                           reuse_record=tmp_path / "dwi.json")
    assert record["qc"]["usable"] is False
    assert record["qc"]["flags"] == ["reused transform: mutual information decreased"]


def test_only_the_finest_level_runs_on_the_metric_grid() -> None:
    """A 1 mm reference is coarsened to 2 mm for the finest level alone; a reference already coarser
    than the metric spacing (or none asked) keeps one ANTs run on its own grid."""
    from thrombus.preprocess.register import import_ants, metric_grid
    from thrombus.preprocess.registrators.ants import stages

    ants = import_ants(1, deterministic=True, seed=1)
    fine = ants.from_numpy(np.ones((40, 50, 12), dtype=np.float32), spacing=(1.0, 1.0, 5.0))
    mask = fine.clone()
    coarse, coarse_mask = metric_grid(ants, fine, mask, 2.0)
    assert tuple(coarse.spacing) == pytest.approx((2.0, 2.0, 5.0)) and coarse.shape == (20, 25, 12)
    assert tuple(coarse_mask.spacing) == tuple(coarse.spacing)
    options = RegistrationOptions()
    schedule = (options.iterations, options.shrink_factors, options.smoothing_sigmas)
    runs = stages(fine, mask, coarse, coarse_mask, schedule)
    assert [run[0] is fine for run in runs] == [True, False]
    assert runs[0][2] == [(1000, 4, 2.0), (500, 2, 1.0)] and runs[1][2] == [(100, 1, 0.0)]
    assert metric_grid(ants, fine, mask, None) == (fine, mask)
    thick = ants.from_numpy(np.ones((20, 20, 8), dtype=np.float32), spacing=(2.5, 2.5, 6.0))
    same, _ = metric_grid(ants, thick, None, 2.0)
    assert same is thick and len(stages(thick, None, same, None, schedule)) == 1


def test_mutual_information_is_judged_on_the_metric_grid_with_the_reference_brain() -> None:
    """The verdict on each attempt is taken on the coarse grid; with no brain mask given, the reference's
    own intensity mask comes along onto that grid (same extent in mm), not an unmasked metric."""
    from thrombus.preprocess.register import import_ants, metric_grid, qc_grid

    ants = import_ants(1, deterministic=True, seed=1)
    values = np.zeros((40, 50, 12), dtype=np.float32)
    values[10:30, 10:40, 2:10] = 1.0
    fine = ants.from_numpy(values, spacing=(1.0, 1.0, 5.0))
    brain = ants.get_mask(fine)
    coarse, coarse_mask = metric_grid(ants, fine, None, 2.0)
    qc_fixed, qc_mask = qc_grid(ants, fine, brain, coarse, coarse_mask)
    assert qc_fixed is coarse and qc_mask.shape == coarse.shape
    assert tuple(qc_mask.spacing) == pytest.approx(tuple(coarse.spacing))
    volume = lambda mask: float((mask.numpy() > 0).sum() * np.prod(mask.spacing))  # noqa: E731
    assert volume(qc_mask) == pytest.approx(volume(brain), rel=0.15)
    given = coarse.clone()
    assert qc_grid(ants, fine, brain, coarse, given) == (coarse, given)
    assert qc_grid(ants, fine, brain, fine, None) == (fine, brain)


def test_ants_is_imported_without_its_plotting_and_learning_parts() -> None:
    """Every register and brainmask job imports ants; its matplotlib and scikit-learn parts were about
    half of that import and no step uses them."""
    script = (
        "import sys; from thrombus.preprocess.register import import_ants;"
        "ants = import_ants(1, deterministic=True, seed=1);"
        "assert callable(ants.registration) and callable(ants.apply_transforms) and callable(ants.image_similarity);"
        "print(' '.join(m for m in ('matplotlib.pyplot', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", done.stdout


def test_statsmodels_loads_only_when_an_ants_function_uses_it() -> None:
    """ants' regression helpers import statsmodels (0.5 s of each job's ants import); it must load only
    when one is called, as the real module, and an import elsewhere must get the real module too."""
    script = (
        "import sys; from thrombus.preprocess.register import import_ants;"
        "ants = import_ants(1, deterministic=True, seed=1);"
        "print(sorted(m for m in ('statsmodels.api', 'statsmodels.formula', 'statsmodels.formula.api') if m in sys.modules));"
        "quantile = sys.modules['ants.math.quantile'];"
        "import statsmodels.api as sm, statsmodels.formula.api as smf;"
        "print(type(sm).__name__, type(smf).__name__, quantile.sm.OLS is sm.OLS, quantile.smf.ols is smf.ols)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "module module True True"], done.stdout
