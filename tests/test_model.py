"""The slab networks: shapes, missing sequences, gradient flow, variants, and learning a tiny case."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from thrombus.model import ARCHITECTURES, ModelConfig, build_model, count_parameters
from thrombus.model.attention import AttentionGate, SequenceAttentionFusion, masked_softmax
from thrombus.model.convlstm import SliceConvLSTM
from thrombus.model.network import SlabUNet


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run these tests on one intra-op thread.

    On a 2-core machine that other jobs also use, two OpenMP threads spin-wait for each other and a
    training step gets 10-40 times slower (measured: 0.08 s per step on one thread, up to 3 s on two);
    one thread keeps the test time bounded whatever else runs.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def model(architecture: str = "upattllstm", seed: int = 0, **sizes: object) -> torch.nn.Module:
    """A freshly initialised network with reproducible weights."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(architecture=architecture, **sizes))


def slab(batch: int, depth: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 4-channel slab and an all-available vector."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, depth, height, width, generator=generator), torch.ones(batch, 4)


@pytest.mark.parametrize("depth, height, width", [(1, 16, 16), (5, 48, 48), (7, 33, 50), (2, 17, 23), (9, 40, 31)])
def test_output_is_one_logit_per_voxel_for_any_slab_size(depth: int, height: int, width: int) -> None:
    x, availability = slab(2, depth, height, width)
    with torch.no_grad():
        out = model()(x, availability)
    assert out.shape == (2, 1, depth, height, width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_outputs_finite_whatever_sequences_are_missing(architecture: str) -> None:
    if architecture == "monai_attention_unet":
        pytest.importorskip("monai")
    missing_sets = [subset for r in range(1, 5) for subset in itertools.combinations(range(4), r)]
    x, availability = slab(len(missing_sets), 3, 32, 32)
    for row, missing in enumerate(missing_sets):
        availability[row, list(missing)] = 0
        x[row, list(missing)] = 0
    network = model(architecture).eval()
    with torch.no_grad():
        out = network(x, availability)
    assert out.shape == (len(missing_sets), 1, 3, 32, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("train_mode", [True, False])
def test_a_missing_sequence_is_ignored_whatever_its_channel_holds(architecture: str, train_mode: bool) -> None:
    if architecture == "monai_attention_unet":
        pytest.importorskip("monai")
    x, availability = slab(2, 4, 32, 40)
    availability[0, 2] = 0
    availability[1, 0] = 0
    zero_filled = x.clone()
    zero_filled[0, 2] = 0
    zero_filled[1, 0] = 0
    garbage = zero_filled.clone()
    garbage[0, 2] = torch.randn_like(garbage[0, 2]) * 50 + 7
    garbage[1, 0] = torch.full_like(garbage[1, 0], -1e3)
    network = model(architecture).train(train_mode)
    with torch.no_grad():
        assert torch.equal(network(zero_filled, availability), network(garbage, availability))


def test_fusion_attention_never_reads_a_masked_stream() -> None:
    torch.manual_seed(0)
    fusion = SequenceAttentionFusion(streams=4, width=8, key_width=8)
    streams = torch.randn(3, 4, 8, 10, 12)
    availability = torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    garbage = streams.clone()
    garbage[availability == 0] = torch.randn_like(garbage[availability == 0]) * 1e3
    weights = fusion.weights(streams, availability)
    assert torch.equal(fusion(streams, availability), fusion(garbage, availability))
    assert torch.all(weights[availability == 0] == 0)
    assert torch.allclose(weights[0].sum(dim=0), torch.ones(10, 12))
    assert torch.allclose(fusion(streams, availability)[1], streams[1, 3])  # one sequence: passed through
    assert torch.all(fusion(streams, availability)[2] == 0)  # none: zeros, not NaN


def test_fusion_scores_are_those_of_a_key_per_stream() -> None:
    """The fusion folds the key convolution into the query; its weights must be those of the plain form."""
    torch.manual_seed(0)
    fusion = SequenceAttentionFusion(streams=4, width=8, key_width=6)
    torch.nn.init.normal_(fusion.sequence_embedding)
    streams = torch.randn(3, 4, 8, 10, 12)
    availability = torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0]])
    mean = (streams * availability[:, :, None, None, None]).sum(1) / availability.sum(1)[:, None, None, None]
    query = fusion.query(mean)
    keys = fusion.key(streams.flatten(0, 1)).reshape(3, 4, 6, 10, 12) + fusion.sequence_embedding[None, :, :, None, None]
    scores = (keys * query[:, None]).sum(dim=2) * fusion.scale
    expected = masked_softmax(scores, availability[:, :, None, None], dim=1)
    assert torch.allclose(fusion.weights(streams, availability), expected, atol=1e-6)


@pytest.mark.parametrize(("stem_width", "norm_groups"), [(8, 8), (16, 4)])
def test_the_stems_run_side_by_side_as_each_stem_alone(stem_width: int, norm_groups: int) -> None:
    """One grouped block gives each stem's own output and gradients, and the checkpoint keeps one block a stem."""
    torch.manual_seed(0)
    stems = SlabUNet(ModelConfig(stem_width=stem_width, norm_groups=norm_groups)).stems
    x = torch.randn(3, 4, 16, 20)
    alone = torch.stack([stem(x[:, index : index + 1]) for index, stem in enumerate(stems.stems)], dim=1)
    alone.square().sum().backward()
    expected = [parameter.grad.clone() for parameter in stems.parameters()]
    stems.zero_grad()
    together = stems(x)
    together.square().sum().backward()
    assert together.shape == (3, 4, stem_width, 16, 20)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    scale = max(gradient.abs().max().item() for gradient in expected)
    for parameter, gradient in zip(stems.parameters(), expected):  # a bias before GroupNorm gets ~0: absolute tolerance
        torch.testing.assert_close(parameter.grad, gradient, rtol=1e-4, atol=1e-5 * scale)
    assert {key.split(".")[1] for key in stems.state_dict()} == {"0", "1", "2", "3"}


def test_masked_softmax_is_finite_with_huge_scores_and_empty_masks() -> None:
    scores = torch.tensor([[1e6, -1e6, 3.0], [5.0, 1.0, 2.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    weights = masked_softmax(scores, mask, dim=1)
    assert torch.isfinite(weights).all()
    assert weights[0, 0] == 0 and torch.isclose(weights[0].sum(), torch.tensor(1.0))
    assert torch.all(weights[1] == 0)


def test_gradients_reach_the_recurrence_the_gates_and_the_fusion() -> None:
    network = model(lstm_on_skips=True)
    assert isinstance(network, SlabUNet)
    x, availability = slab(2, 5, 32, 32)
    target = (torch.rand(2, 1, 5, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.95).float()
    F.binary_cross_entropy_with_logits(network(x, availability), target).backward()
    groups = {
        "lstm": [m for m in network.modules() if isinstance(m, SliceConvLSTM)],
        "gates": [m for m in network.modules() if isinstance(m, AttentionGate)],
        "fusion": [m for m in network.modules() if isinstance(m, SequenceAttentionFusion)],
    }
    assert len(groups["lstm"]) == 5 and len(groups["gates"]) == 4 and len(groups["fusion"]) == 1
    for name, modules in groups.items():
        for module in modules:
            for parameter_name, parameter in module.named_parameters():
                assert parameter.grad is not None, f"{name}.{parameter_name} got no gradient"
                assert parameter.grad.norm() > 0, f"{name}.{parameter_name} has a zero gradient"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_variant_builds_trains_a_step_and_keeps_the_slab_shape(architecture: str) -> None:
    if architecture == "monai_attention_unet":
        pytest.importorskip("monai")
    network = model(architecture)
    x, availability = slab(2, 3, 20, 27)
    availability[1, 3] = 0
    out = network(x, availability)
    assert out.shape == (2, 1, 3, 20, 27)
    out.mean().backward()
    assert count_parameters(network) > 100_000
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)


def test_the_ablations_remove_exactly_their_part() -> None:
    def kinds(architecture: str) -> set[type]:
        return {type(m) for m in model(architecture).modules()}

    assert {SliceConvLSTM, AttentionGate, SequenceAttentionFusion} <= kinds("upattllstm")
    assert SliceConvLSTM not in kinds("no_lstm") and AttentionGate in kinds("no_lstm")
    assert SliceConvLSTM in kinds("no_attention")
    assert not {AttentionGate, SequenceAttentionFusion} & kinds("no_attention")
    assert not {SliceConvLSTM, AttentionGate, SequenceAttentionFusion} & kinds("unet2d")


def test_the_recurrence_carries_information_along_the_slices() -> None:
    network = model().eval()
    x, availability = slab(1, 5, 32, 32)
    changed = x.clone()
    changed[:, :, 0] += 3.0  # only the first slice
    with torch.no_grad():
        difference = (network(x, availability) - network(changed, availability)).abs().amax(dim=(0, 1, 3, 4))
    assert difference[-1] > 0  # the last slice sees the first one through the bidirectional LSTM
    no_recurrence = model("no_lstm").eval()
    with torch.no_grad():
        difference = (no_recurrence(x, availability) - no_recurrence(changed, availability)).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(difference[1:] == 0)


@pytest.mark.bad_input
def test_wrong_inputs_are_refused_with_the_expected_shape() -> None:
    network = model()
    with pytest.raises(ValueError, match="slab"):
        network(torch.zeros(1, 4, 32, 32), torch.ones(1, 4))
    with pytest.raises(ValueError, match="built for 4 channels"):
        network(torch.zeros(1, 3, 2, 32, 32), torch.ones(1, 3))
    with pytest.raises(ValueError, match="availability"):
        network(torch.zeros(2, 4, 2, 32, 32), torch.ones(4))


@pytest.mark.bad_input
def test_config_round_trips_and_refuses_unknown_values() -> None:
    config = ModelConfig(architecture="no_lstm", base_width=8, lstm_on_skips=True)
    assert ModelConfig.from_mapping(config.to_dict()) == config
    assert config.widths == (8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_mapping({"base_widht": 8})
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(architecture="transformer")


def synthetic_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One slab 1x4x5x48x48: a dark ellipsoid (a clot's blooming) on channel 0, noise everywhere."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 5, 48, 48, generator=generator) * 0.5
    d, h, w = torch.meshgrid(torch.arange(5.0), torch.arange(48.0), torch.arange(48.0), indexing="ij")
    blob = ((h - 20) / 4) ** 2 + ((w - 27) / 3) ** 2 + ((d - 2) / 1.5) ** 2 <= 1
    x[0, 0][blob] -= 3.0
    return x, torch.ones(1, 4), blob[None, None].float()


def dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(2 * (prediction * target).sum() / (prediction.sum() + target.sum()))


def test_the_full_model_overfits_a_tiny_case() -> None:
    network = model()
    x, availability, target = synthetic_case()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for _ in range(200):
        logits = network(x, availability)
        if dice((logits.detach() > 0).float(), target) > 0.95:
            break
        probabilities = torch.sigmoid(logits)
        soft_dice = (2 * (probabilities * target).sum() + 1) / (probabilities.sum() + target.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + 1 - soft_dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        prediction = (network.eval()(x, availability) > 0).float()
    assert dice(prediction, target) > 0.9
