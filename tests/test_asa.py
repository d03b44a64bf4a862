"""ASA against the authors' golden outputs (tests/data/asa_cases.pt) and its documented quirks."""
from pathlib import Path

import pytest
import torch

from models.module.Attn import ASA

CASES = torch.load(Path(__file__).parent / "data" / "asa_cases.pt", weights_only=False)
CASE_IDS = [f"N{c['N']}-T{c['T']}-C{c['C']}-r{c['reduction']}-lam{c['lam']}" for c in CASES]


def build(case, mask):
    asa = ASA(case["T"], case["C"], reduction=case["reduction"], lam=case["lam"], mask=mask)
    asa.load_state_dict(case["state_dict"])
    return asa


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_forward_and_backward_match_authors(case):
    asa = build(case, "reference")
    x = case["x"].clone().requires_grad_(True)
    y = asa(x)
    (y * case["grad_y"]).sum().backward()
    torch.testing.assert_close(y, case["y_reference"], rtol=0, atol=1e-5)
    torch.testing.assert_close(x.grad, case["grad_x_reference"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(asa.conv1.weight.grad, case["grad_conv1"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(asa.conv2.weight.grad, case["grad_conv2"], rtol=1e-5, atol=1e-5)
    # Dead parameters: they only choose the top-k positions, so no gradient reaches them.
    assert all(p.grad is None for p in (asa.alpha, asa.beta, *asa.fc.parameters()))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_per_sample_matches_each_sample_alone(case):
    asa = build(case, "per_sample")
    with torch.no_grad():
        torch.testing.assert_close(asa(case["x"]), case["y_per_sample"], rtol=0, atol=1e-5)


def test_reference_mode_couples_the_batch_and_per_sample_does_not():
    case = CASES[1]
    ref, per = build(case, "reference"), build(case, "per_sample")
    x = case["x"]
    with torch.no_grad():
        alone = torch.cat([per(x[i:i + 1]) for i in range(len(x))])
        torch.testing.assert_close(per(x), alone, rtol=0, atol=1e-6)
        # For N = 1 both modes coincide; in a batch the reference's union masks change the output.
        torch.testing.assert_close(torch.cat([ref(x[i:i + 1]) for i in range(len(x))]), alone,
                                   rtol=0, atol=1e-6)
        assert not torch.allclose(ref(x), alone, atol=1e-4)


def test_per_sample_output_independent_of_batch_order():
    torch.manual_seed(0)
    asa = ASA(6, 10, reduction=2, lam=0.5, mask="per_sample")
    x = torch.randn(5, 6, 10, 4, 3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(asa(x[perm]), asa(x)[perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mask", ["reference", "per_sample"])
def test_batch_of_one_runs_and_backpropagates(mask):
    asa = ASA(4, 8, reduction=2, lam=0.5, mask=mask)
    x = torch.randn(1, 4, 8, 5, 5, requires_grad=True)
    y = asa(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_mask_is_xor_of_topk_channel_and_time_masks():
    torch.manual_seed(1)
    asa = ASA(4, 6, lam=0.5, mask="per_sample")
    x = torch.randn(2, 4, 6, 3, 3)
    m = asa.important_mask(x)[..., 0, 0]                                     # [N, T, C]
    with torch.no_grad():
        avg, mx = x.mean((3, 4)), x.amax((3, 4))
        score = asa.fc((0.5 * (avg + mx) + 0.5 * avg + 0.5 * mx).transpose(1, 2)).transpose(1, 2)
    for n in range(2):                                                        # explicit loops
        for t in range(4):
            for c in range(6):
                in_c = (score[n, t] > score[n, t, c]).sum() < 3              # top-3 of 6 channels
                in_t = (score[n, :, c] > score[n, t, c]).sum() < 2           # top-2 of 4 steps
                assert m[n, t, c] == float(bool(in_c) != bool(in_t))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lam=0.0), "lam"), (dict(lam=1.0), "lam"), (dict(lam=1.5), "lam"),
    (dict(reduction=5), "reduction"), (dict(reduction=0), "reduction"),
    (dict(mask="batch"), "mask"), (dict(lam=0.05), "selects no"),
])
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ASA(4, 8, **kwargs)


def test_wrong_input_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\[N, 4, 8, H, W\]"):
        ASA(4, 8)(torch.randn(2, 4, 7, 3, 3))
