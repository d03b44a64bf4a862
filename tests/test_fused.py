"""The fused backend (models/fused) against the eager definitions: LIF, PLIF/LIFNode, ASA, whole nets.

Forward spikes/outputs must be bit-identical; gradients equal to ~1e-6 (float32) or 1e-12 (float64).
"""
import copy
from types import SimpleNamespace

import pytest
import torch

from models import create_net
from models.module.Attn import ASA
from models.module.lif import LIF, lif_eager
from models.module.decay_input import LIFNode, PLIF


def currents(shape, seed=0, scale=0.6, shift=0.25, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)


def run(fn, x, grad_out, params=()):
    xi = x.detach().clone().requires_grad_(True)
    out = fn(xi)
    grads = torch.autograd.grad(out, [xi, *params], grad_out)
    return out.detach(), grads


def eager(module):
    """A copy of ``module`` (same parameters) computing with the eager backend."""
    twin = copy.deepcopy(module)
    for m in twin.modules():
        if hasattr(m, "backend"):
            m.backend = "eager"
    return twin


def non_contiguous(x):
    """The same values as ``x`` in a tensor with transposed strides."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


SHAPES = [(4, 9, 3, 5, 5), (1, 7, 6), (3, 1, 4, 2), (1, 1, 5), (2, 40, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_fused_lif_equals_eager(shape, layout):
    x = currents(shape, seed=len(shape))
    if layout == "transposed":
        x = non_contiguous(x)
        assert not x.is_contiguous() or shape[1] == 1 or shape[0] == 1
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    s_f, (gx_f,) = run(LIF(), x, g)
    s_e, (gx_e,) = run(LIF(backend="eager"), x, g)
    assert torch.equal(s_f, s_e)
    torch.testing.assert_close(gx_f, gx_e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(vreset=-0.1, beta=0.05), dict(decay=0.9, vth=0.5, lens=0.5)])
def test_fused_lif_other_constants_float64(kwargs):
    x = currents((3, 12, 4), seed=2, dtype=torch.float64)
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s_f, (gx_f,) = run(LIF(**kwargs), x, g)
    s_e, (gx_e,) = run(lambda v: lif_eager(v, **{**dict(vth=0.3, decay=0.3, beta=0.0, vreset=0.0,
                                                        lens=0.25), **kwargs}), x, g)
    assert torch.equal(s_f, s_e)
    torch.testing.assert_close(gx_f, gx_e, rtol=0, atol=1e-12)


def test_lif_threshold_ties_and_half_input():
    x = torch.tensor([[[0.3], [0.3], [0.0], [0.29999998]]])       # u exactly at Vth fires
    assert LIF()(x).flatten().tolist() == LIF(backend="eager")(x).flatten().tolist() == [1, 1, 0, 0]
    xh = currents((2, 5, 3)).half()
    s = LIF()(xh)                        # AMP: integrated in float32, spikes back in half
    assert s.dtype == torch.float16 and torch.equal(s.float(), LIF()(xh.float()))


@pytest.mark.parametrize("node", ["plif", "lif"])
@pytest.mark.parametrize("shape", [(3, 8, 4, 6, 6), (1, 1, 5), (2, 30, 7)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_fused_decay_input_nodes_equal_eager(node, shape, layout):
    x = currents(shape, seed=5, scale=1.5, shift=0.8)
    if layout == "transposed":
        x = non_contiguous(x)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    results = []
    for backend in ("fused", "eager"):
        mod = PLIF(backend=backend) if node == "plif" else LIFNode(backend=backend)
        if node == "plif":
            with torch.no_grad():
                mod.w.fill_(0.4)
        results.append(run(mod, x, g, tuple(mod.parameters())))
    (s_f, g_f), (s_e, g_e) = results
    assert torch.equal(s_f, s_e)
    for a, b in zip(g_f, g_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_plif_float64_exact_gradients():
    x = currents((2, 10, 3, 4), seed=8, scale=1.5, shift=0.8, dtype=torch.float64)
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    res = []
    for backend in ("fused", "eager"):
        mod = PLIF(backend=backend).double()
        res.append(run(mod, x, g, (mod.w,)))
    assert torch.equal(res[0][0], res[1][0])
    for a, b in zip(res[0][1], res[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def asa_both_backends(asa, x, g):
    """(output, gradients of x, conv1, conv2) of ``asa`` and of its eager twin."""
    return [run(m, x, g, (m.conv1.weight, m.conv2.weight)) for m in (asa, eager(asa))]


@pytest.mark.parametrize("mask", ["reference", "per_sample"])
@pytest.mark.parametrize("N, T, C, H, r", [(3, 6, 8, 5, 2), (1, 4, 4, 3, 1), (2, 2, 4, 4, 1),
                                           (4, 20, 16, 7, 4)])
def test_fused_asa_equals_eager(mask, N, T, C, H, r):
    torch.manual_seed(N * 100 + T)
    asa = ASA(T, C, reduction=r, lam=0.5, mask=mask)
    x = torch.randn(N, T, C, H, H)
    x[:, :, :, 0, 0] = -1.0                        # ties at the masked max (zeros) for some maps
    (y_f, g_f), (y_e, g_e) = asa_both_backends(asa, x, torch.randn_like(x))
    assert torch.equal(y_f, y_e)
    for a, b in zip(g_f, g_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("mask", ["reference", "per_sample"])
def test_fused_asa_max_ties_route_to_first_index(mask):
    """Integer-valued inputs: the T*C max has many ties; the gradient must go where torch.max's
    first-occurrence index sends it."""
    torch.manual_seed(3)
    asa = ASA(6, 5, mask=mask)
    x = torch.randint(-2, 3, (3, 6, 5, 4, 4)).float()
    (y_f, g_f), (y_e, g_e) = asa_both_backends(asa, x, torch.randn_like(x))
    assert torch.equal(y_f, y_e)
    for a, b in zip(g_f, g_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_asa_non_contiguous_input():
    asa = ASA(5, 6)
    x = non_contiguous(torch.randn(3, 5, 6, 4, 4))
    g = torch.randn(3, 5, 6, 4, 4)
    y_f, (gx_f,) = run(asa, x, g)
    y_e, (gx_e,) = run(eager(asa), x, g)
    assert torch.equal(y_f, y_e)
    torch.testing.assert_close(gx_f, gx_e, rtol=1e-5, atol=1e-6)


def small_net(arch, T, size, backend="fused"):
    return create_net(SimpleNamespace(arch=arch, T=T, attention="ASA", asa_mask="reference", reduction=2,
                                      lam=0.5, ps="00111", num_classes=11, frame_size=(size, size),
                                      backend=backend))


@pytest.mark.parametrize("arch, T, size", [("A", 6, 32), ("B", 4, 64), ("C", 4, 64), ("sew18", 4, 32)])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_whole_net_fused_equals_eager(arch, T, size, mode):
    """The -backend switch: the same network built both ways gives the same logits (bit for bit)
    and the same parameter gradients, in evaluation and in training (same dropout masks)."""
    torch.manual_seed(0)
    net = small_net(arch, T, size).train(mode == "train")
    ref = small_net(arch, T, size, backend="eager").train(mode == "train")
    ref.load_state_dict(net.state_dict())
    x = (torch.rand(2, T, 2, size, size, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    out, grads = [], []
    for m in (net, ref):
        torch.manual_seed(5)                                     # the same dropout masks
        o = m(x)
        o.square().sum().backward()
        out.append(o.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert torch.equal(out[0], out[1])
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5, msg=n)


def test_backend_reaches_every_spiking_layer_and_asa():
    net = small_net("A", 4, 32, backend="eager")
    backends = [m.backend for m in net.modules() if hasattr(m, "backend")]
    assert len(backends) == 5 + 3 and set(backends) == {"eager"}       # 5 LIF + 3 ASA
    with pytest.raises(ValueError, match="backend"):
        LIF(backend="lean")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_paths_on_cuda_equal_cpu():
    x = currents((2, 6, 4, 5, 5))
    g = torch.randn(x.shape)
    for make in (LIF, PLIF, LIFNode, lambda: ASA(6, 4)):
        torch.manual_seed(0)
        cpu = make()
        cuda = make().cuda()
        cuda.load_state_dict(cpu.state_dict())
        s_c, g_c = run(cpu, x, g)
        s_g, g_g = run(cuda, x.cuda(), g.cuda())
        torch.testing.assert_close(s_g.cpu(), s_c, rtol=0, atol=1e-5)
        torch.testing.assert_close(g_g[0].cpu(), g_c[0], rtol=1e-4, atol=1e-5)


