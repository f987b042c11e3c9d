"""Gradual modality dropout and the site-heterogeneity augmentation scheduled with it."""

from __future__ import annotations

import math

import pytest
import torch

from thrombus.training.gmd import GMDOptions, apply_gmd, strength
from thrombus.training.heterogeneity import HeterogeneityOptions, perturb_site

#: Progress values inside each quarter of training, and the strength there per mode.
SCHEDULE = {
    "gradual": {0.1: 0.25, 0.3: 0.5, 0.6: 0.75, 0.9: 1.0},
    "full": {0.1: 1.0, 0.3: 1.0, 0.6: 1.0, 0.9: 1.0},
    "none": {0.1: 0.0, 0.3: 0.0, 0.6: 0.0, 0.9: 0.0},
}
#: A progress value at which `gradual` has each strength below 1.
PROGRESS_AT = {0.25: 0.1, 0.5: 0.3, 0.75: 0.6}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ones_batch(batch: int, channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxels all 1, so that a dropped channel's value is its factor."""
    return torch.ones(batch, channels, 1, 2, 2), torch.ones(batch, channels)


def factors_only(**options: object) -> GMDOptions:
    """GMD without the heterogeneity perturbations."""
    return GMDOptions(heterogeneity=False, **options)


@pytest.mark.parametrize("mode", sorted(SCHEDULE))
def test_strength_follows_the_schedule(mode: str) -> None:
    for progress, expected in SCHEDULE[mode].items():
        assert strength(progress, mode) == expected
    assert strength(0.0, "gradual") == 0.25 and strength(0.25, "gradual") == 0.5 and strength(1.0, "gradual") == 1.0


@pytest.mark.bad_input
def test_strength_refuses_bad_progress_and_modes() -> None:
    with pytest.raises(ValueError, match="progress"):
        strength(1.5, "gradual")
    with pytest.raises(ValueError, match="mode"):
        strength(0.5, "sometimes")
    with pytest.raises(ValueError, match="mode"):
        GMDOptions(mode="sometimes")


def test_options_come_from_a_config_section() -> None:
    options = GMDOptions.from_mapping(
        {"mode": "full", "p": 0.3, "droppable": [0, 2], "heterogeneity_options": {"noise_sd": 0.05}}
    )
    assert options.droppable == (0, 2) and options.heterogeneity_options.noise_sd == 0.05
    with pytest.raises(ValueError, match="unknown GMD config keys"):
        GMDOptions.from_mapping({"probability": 0.2})


def test_samples_are_picked_with_probability_p() -> None:
    batch, p = 5000, 0.2
    x, availability = ones_batch(batch)
    out, _ = apply_gmd(x, availability, 0.1, factors_only(p=p, droppable=(0, 1, 2)), seeded())
    picked = (out[:, :3] != 1).flatten(1).any(dim=1)
    assert torch.equal(picked, (out[:, :3] != 1).flatten(1).all(dim=1))  # every droppable channel of a picked sample
    tolerance = 4 * math.sqrt(p * (1 - p) / batch)
    assert abs(picked.float().mean().item() - p) < tolerance


@pytest.mark.parametrize("s", sorted(PROGRESS_AT))
def test_dropped_factors_are_one_minus_s_plus_noise_of_sd_sigma(s: float) -> None:
    batch = 20000
    x, availability = ones_batch(batch)
    out, new_availability = apply_gmd(x, availability, PROGRESS_AT[s], factors_only(p=1.0, droppable=(0, 1, 2)), seeded(1))
    factors = out[:, :3, 0, 0, 0].flatten()
    assert torch.all(out[:, :3] == out[:, :3, :1, :1, :1])  # one scalar per modality
    assert abs(factors.mean().item() - (1 - s)) < 4 * 0.1 / math.sqrt(factors.numel())
    assert abs(factors.std().item() - 0.1) < 0.005
    assert torch.equal(out[:, 3], x[:, 3])  # not in the drop list
    assert torch.equal(new_availability, availability)  # dimmed, not removed


def test_full_strength_removes_exactly_and_flags_missing() -> None:
    x, availability = ones_batch(200)
    out, new_availability = apply_gmd(x * 2.5, availability, 0.9, factors_only(p=1.0, droppable=(1, 2)), seeded())
    assert torch.all(out[:, 1:3] == 0) and torch.all(new_availability[:, 1:3] == 0)
    assert torch.all(out[:, [0, 3]] == 2.5) and torch.all(new_availability[:, [0, 3]] == 1)


@pytest.mark.parametrize("progress", [0.1, 0.9])
def test_never_all_available_modalities_are_dropped(progress: float) -> None:
    generator = seeded(2)
    availability = (torch.rand(3000, 4, generator=generator) < 0.6).float()
    x = torch.randn(3000, 4, 1, 2, 2, generator=generator) * availability[:, :, None, None, None]
    out, new_availability = apply_gmd(x, availability, progress, factors_only(p=1.0), generator)
    had_any = availability.sum(dim=1) > 0
    if progress == 0.9:  # s = 1: all but one of the available modalities removed
        assert torch.equal(new_availability.sum(dim=1)[had_any], torch.ones(int(had_any.sum())))
    untouched = (out == x).flatten(2).all(dim=2) & (availability > 0)
    assert torch.all(untouched.sum(dim=1)[had_any] == 1)  # the spared one
    spared_index = untouched.float().argmax(dim=1)[had_any & (availability.sum(dim=1) == 4)]
    assert set(spared_index.tolist()) == {0, 1, 2, 3}  # drawn, not always the same channel


def test_a_non_droppable_available_modality_is_enough_to_keep() -> None:
    x, availability = ones_batch(100)
    _, new_availability = apply_gmd(x, availability, 0.9, factors_only(p=1.0, droppable=(0, 1, 2)), seeded())
    assert torch.all(new_availability[:, :3] == 0) and torch.all(new_availability[:, 3] == 1)


@pytest.mark.parametrize("heterogeneity", [False, True])
def test_the_seed_decides_everything(heterogeneity: bool) -> None:
    x = torch.randn(16, 4, 5, 12, 12, generator=seeded(3))
    availability = torch.ones(16, 4)
    options = GMDOptions(p=0.5, heterogeneity=heterogeneity)
    first = apply_gmd(x, availability, 0.6, options, seeded(7))
    again = apply_gmd(x, availability, 0.6, options, seeded(7))
    other = apply_gmd(x, availability, 0.6, options, seeded(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("progress", [0.1, 0.6, 0.9])
def test_unavailable_channels_are_never_touched(progress: float) -> None:
    x = torch.randn(64, 4, 3, 8, 8, generator=seeded(4))
    availability = torch.ones(64, 4)
    availability[:, 1] = 0
    availability[::2, 3] = 0
    x[:, 1] = 123.0  # garbage, as if the zero filling had failed
    out, new_availability = apply_gmd(x, availability, progress, GMDOptions(p=1.0), seeded())
    missing = availability == 0
    assert torch.equal(out[missing], x[missing])
    assert torch.all(new_availability[missing] == 0)


def test_none_mode_and_zero_probability_are_the_identity() -> None:
    x = torch.randn(8, 4, 3, 8, 8, generator=seeded(5))
    availability = torch.ones(8, 4)
    for options in (GMDOptions(mode="none", p=1.0), GMDOptions(p=0.0)):
        out, new_availability = apply_gmd(x, availability, 0.9, options, seeded())
        assert torch.equal(out, x) and torch.equal(new_availability, availability)


def test_inputs_are_not_modified_and_shapes_are_checked() -> None:
    x = torch.randn(8, 4, 3, 8, 8, generator=seeded(6))
    availability = torch.ones(8, 4)
    x_before, availability_before = x.clone(), availability.clone()
    apply_gmd(x, availability, 0.9, GMDOptions(p=1.0), seeded())
    assert torch.equal(x, x_before) and torch.equal(availability, availability_before)
    with pytest.raises(ValueError, match="availability"):
        apply_gmd(x, torch.ones(8, 3), 0.5, GMDOptions(), seeded())
    with pytest.raises(ValueError, match="slabs"):
        apply_gmd(x[:, :, 0], availability, 0.5, GMDOptions(), seeded())
    with pytest.raises(ValueError, match="do not exist"):
        apply_gmd(x, availability, 0.5, GMDOptions(droppable=(4,)), seeded())


def brain_volumes(count: int = 6) -> torch.Tensor:
    """Z-scored-looking volumes (n, D, H, W) with a zero background around a disc-shaped 'brain'."""
    _, h, w = torch.meshgrid(torch.arange(7.0), torch.arange(24.0), torch.arange(24.0), indexing="ij")
    brain = (h - 11.5) ** 2 + (w - 11.5) ** 2 < 9.0**2
    values = torch.randn(count, 7, 24, 24, generator=seeded(9))
    return torch.where(brain, values, torch.zeros_like(values))


def test_site_perturbation_keeps_the_background_and_grows_with_strength() -> None:
    volumes = brain_volumes()
    options = HeterogeneityOptions()
    assert torch.equal(perturb_site(volumes, 0.0, seeded(), options), volumes)
    changes = []
    for s in (0.25, 0.5, 1.0):
        out = perturb_site(volumes, s, seeded(), options)
        assert torch.isfinite(out).all()
        assert torch.all(out[volumes == 0] == 0)
        changes.append((out - volumes).abs().mean().item())
    assert 0 < changes[0] < changes[1] < changes[2]


def test_slice_blur_acts_along_the_slice_axis_only() -> None:
    blur_only = HeterogeneityOptions(noise_sd=0.0, bias_log_sd=0.0, gamma_log_sd=0.0, blur_max_sigma=1.0)
    in_plane = torch.randn(4, 1, 16, 16, generator=seeded(10)) + 5.0
    constant_along_z = in_plane.expand(4, 6, 16, 16).clone()
    assert torch.allclose(perturb_site(constant_along_z, 1.0, seeded(), blur_only), constant_along_z)
    varying_along_z = constant_along_z * torch.arange(1.0, 7.0)[None, :, None, None]
    blurred = perturb_site(varying_along_z, 1.0, seeded(), blur_only)
    assert not torch.allclose(blurred, varying_along_z)
    low, high = varying_along_z.amin(dim=1, keepdim=True), varying_along_z.amax(dim=1, keepdim=True)
    assert torch.all((blurred >= low - 1e-5) & (blurred <= high + 1e-5))  # a weighted mean of the column


def test_heterogeneity_hits_only_picked_droppable_modalities_still_present() -> None:
    x = brain_volumes(16).reshape(4, 4, 7, 24, 24)
    availability = torch.ones(4, 4)
    plain, _ = apply_gmd(x, availability, 0.6, GMDOptions(p=1.0, droppable=(0, 1), heterogeneity=False), seeded())
    perturbed, _ = apply_gmd(x, availability, 0.6, GMDOptions(p=1.0, droppable=(0, 1)), seeded())
    assert torch.equal(perturbed[:, 2:], x[:, 2:])
    assert not torch.allclose(perturbed[:, :2], plain[:, :2])
    assert torch.all(perturbed[x == 0] == 0)
