"""LIF (arch A/D) against hand-computed values, fused == eager; PLIF/LIF (B/C) against spikingjelly."""
import pytest
import torch
from spikingjelly.clock_driven import neuron, surrogate

from models.module.lif import LIF, RectSpike, lif_eager
from models.module.decay_input import LIFNode, PLIF
from models.module.neuron import SpikingNeuron

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def currents(shape, seed=0, dtype=torch.float32):
    """Input currents spread around the thresholds so that neurons fire, reset and stay silent."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 0.6 + 0.25).to(dtype)


@pytest.mark.parametrize("backend", ["fused", "eager"])
def test_lif_three_steps_by_hand(backend):
    # neuron 0: u = 0.2, 0.26, 0.578 -> fires at t=2 (h: 0.06, 0.078)
    # neuron 1: u = 0.4 (fires, h = 0), 0.1 (h = 0.03), 0.28
    # neuron 2: u = 0.3 exactly -> fires (Heaviside of 0 is 1), then 0.25 < Vth
    x = torch.tensor([[[0.2, 0.4, 0.3], [0.2, 0.1, 0.25], [0.5, 0.25, 0.0]]])       # [N=1, T=3, 3]
    spikes = LIF(backend=backend)(x)
    assert torch.equal(spikes, torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]))


@pytest.mark.parametrize("backend", ["fused", "eager"])
def test_lif_gradient_by_hand(backend):
    # I = 0.2 each step: u = 0.2, 0.26, 0.278, all silent and all inside the window (surrogate 2).
    # d(sum s)/dI2 = 2
    # d/dI1 = (1 + 0.6*(0 - 0.26))*2 + 0.6*1       = 2.288      (0.6 = decay * g_u2)
    # d/dI0 = (1 + 0.6864*(0 - 0.2))*2 + 0.6864    = 2.41184    (0.6864 = decay * 2.288)
    x = torch.full((1, 3, 1), 0.2, dtype=torch.float64, requires_grad=True)
    s = LIF(backend=backend)(x)
    s.sum().backward()
    assert s.sum() == 0
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([2.41184, 2.288, 2.0], dtype=torch.float64))


def test_rectangular_surrogate_window():
    offsets = torch.tensor([-0.4, -0.26, -0.24, -0.1, 0.0, 0.1, 0.24, 0.26, 0.4])
    u = (0.3 + offsets).requires_grad_(True)
    s = RectSpike.apply(u, 0.3, 0.25)
    s.sum().backward()
    assert torch.equal(s, (offsets >= 0).float())
    assert torch.equal(u.grad, torch.tensor([0.0, 0, 2, 2, 2, 2, 2, 0, 0]))


def test_fused_lif_equals_eager_spikes_and_gradients():
    x = currents((4, 9, 3, 5, 5))
    grad_out = torch.randn_like(x)
    results = []
    for backend in ("fused", "eager"):
        xi = x.clone().requires_grad_(True)
        s = LIF(backend=backend)(xi)
        (s * grad_out).sum().backward()
        results.append((s, xi.grad))
    (s_f, g_f), (s_e, g_e) = results
    assert torch.equal(s_f, s_e) and 0.1 < s_f.mean() < 0.9
    torch.testing.assert_close(g_f, g_e, rtol=1e-5, atol=1e-6)
    assert (g_f != 0).float().mean() > 0.3


def test_fused_lif_jacobian_equals_eager_jacobian():
    """gradcheck-style: the full analytic Jacobian of the fused path equals autograd's on the eager
    definition (numerical differences are useless here: the Heaviside step has no derivative)."""
    x = currents((2, 6, 3), seed=3, dtype=torch.float64)
    jac_fused = torch.autograd.functional.jacobian(LIF(), x)
    jac_eager = torch.autograd.functional.jacobian(lif_eager, x)
    torch.testing.assert_close(jac_fused, jac_eager, rtol=0, atol=1e-12)
    assert jac_fused.abs().sum() > 0


def test_lif_is_stateless_across_calls():
    x = currents((2, 5, 7))
    lif = LIF()
    assert torch.equal(lif(x), lif(x))
    # the first step only sees the input: no membrane is carried over from the previous call
    assert torch.equal(lif(x)[:, 0], (x[:, 0] >= 0.3).float())


def spikingjelly_reference(kind, x, grad_out, w):
    """Spikes and gradients of spikingjelly's own node, stepped one time step at a time."""
    if kind == "plif":
        node = neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=surrogate.ATan())
        with torch.no_grad():
            node.w.fill_(w)
    else:
        node = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan())
    node = node.to(x.device, x.dtype)
    xr = x.clone().requires_grad_(True)
    spikes = torch.stack([node(xr[:, t]) for t in range(x.shape[1])], dim=1)
    (spikes * grad_out).sum().backward()
    return spikes, xr.grad, (node.w.grad if kind == "plif" else None)


def ours(kind, x, grad_out, w, backend):
    node = PLIF(backend=backend) if kind == "plif" else LIFNode(backend=backend)
    node = node.to(x.device, x.dtype)
    if kind == "plif":
        with torch.no_grad():
            node.w.fill_(w)
    xo = x.clone().requires_grad_(True)
    spikes = node(xo)
    (spikes * grad_out).sum().backward()
    return spikes, xo.grad, (node.w.grad if kind == "plif" else None)


@pytest.mark.parametrize("backend", ["fused", "eager"])
@pytest.mark.parametrize("kind, w", [("plif", 0.0), ("plif", 0.7), ("lif", None)])
def test_bc_neurons_match_spikingjelly(kind, w, backend, device="cpu"):
    x = (currents((3, 8, 4, 6, 6), seed=5) * 2.5 + 0.5).to(device)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(device)
    s_ref, gx_ref, gw_ref = spikingjelly_reference(kind, x, grad_out, w)
    s, gx, gw = ours(kind, x, grad_out, w, backend)
    assert torch.equal(s, s_ref) and 0.05 < s.mean() < 0.95
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    if kind == "plif":
        assert gw.shape == gw_ref.shape == () and gw_ref.abs() > 1e-3
        torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-5)


@CUDA
@pytest.mark.parametrize("kind, w", [("plif", 0.3), ("lif", None)])
def test_bc_neurons_match_spikingjelly_on_cuda(kind, w):
    test_bc_neurons_match_spikingjelly(kind, w, backend="fused", device="cuda")


@CUDA
def test_fused_lif_on_cuda_equals_cpu():
    x = currents((2, 7, 3, 4, 4))
    grad_out = torch.randn_like(x)
    out = []
    for device in ("cpu", "cuda"):
        xi = x.detach().to(device).requires_grad_(True)      # a leaf on both devices
        s = LIF()(xi)
        (s * grad_out.to(device)).sum().backward()
        out.append((s.cpu(), xi.grad.cpu()))
    assert torch.equal(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


def test_every_neuron_module_is_a_spiking_neuron():
    assert all(issubclass(c, SpikingNeuron) for c in (LIF, PLIF, LIFNode))
    assert [n for n, _ in PLIF().named_parameters()] == ["w"] and PLIF().w.item() == 0.0
    assert list(LIFNode().parameters()) == [] and list(LIF().parameters()) == []
