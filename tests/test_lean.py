"""The memory-lean training path of arch A/D blocks (models/lif_snn.py: ConvAttLIF._lean_forward,
_BatchNormAvgPool, ASA's rebuilt input): same math as the plain path, less kept for backward."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.lif_snn import LIFSNN, _BatchNormAvgPool
from models.module.Attn import ASA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from reference_step import build_net, make_batch  # noqa: E402


def set_lean(net, on: bool):
    for m in net.modules():
        if hasattr(m, "lean"):
            m.lean = on


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bn_pool_equals_batchnorm_then_avgpool(k, layout, dtype):
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y0 = (torch.randn(6, 5, 8, 8, dtype=dtype) * 2 + 0.7).contiguous(memory_format=fmt)
    bn_ref, bn = (torch.nn.BatchNorm2d(5).to(dtype) for _ in range(2))
    with torch.no_grad():
        for b in (bn_ref, bn):
            b.weight.copy_(torch.linspace(-1.5, 2.0, 5))
            b.bias.copy_(torch.linspace(0.3, -0.4, 5))
            b.running_mean.fill_(0.2)
            b.running_var.fill_(1.5)
    g = torch.randn(6, 5, 8 // k, 8 // k, dtype=dtype)
    y_ref = y0.clone().requires_grad_()
    out_ref = F.avg_pool2d(bn_ref(y_ref), k) if k > 1 else bn_ref(y_ref)
    out_ref.backward(g)
    y = y0.clone().requires_grad_()
    out = _BatchNormAvgPool.apply(y, bn.weight, bn.bias, bn, k)
    assert out.is_contiguous() and out.shape == out_ref.shape
    out.backward(g)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(y.grad, y_ref.grad, **tol)
    torch.testing.assert_close(bn.weight.grad, bn_ref.weight.grad, **tol)
    torch.testing.assert_close(bn.bias.grad, bn_ref.bias.grad, **tol)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, **tol)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, **tol)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 1


def test_bn_pool_refuses_a_second_backward():
    bn = torch.nn.BatchNorm2d(3)
    y = torch.randn(4, 3, 4, 4, requires_grad=True)
    out = _BatchNormAvgPool.apply(y * 1.0, bn.weight, bn.bias, bn, 2)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.sum().backward()


def test_asa_with_rebuilt_input_equals_kept_input():
    torch.manual_seed(0)
    asa = ASA(6, 8, reduction=2)
    x0 = torch.randn(3, 6, 8, 5, 5)
    g = torch.randn(3, 6, 8, 5, 5)
    grads = []
    for rebuild in (None, lambda: x0.clone()):
        asa.zero_grad()
        x = x0.clone().requires_grad_()
        y = asa(x, rebuild_input=rebuild)
        y.backward(g)
        grads.append((y.detach(), x.grad, asa.conv1.weight.grad.clone(), asa.conv2.weight.grad.clone()))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch, widths, ps", [("A", (8, 16, 16), "00111"), ("D", (6, 6, 6), "11111")])
def test_lean_training_step_equals_plain_in_float64(arch, widths, ps):
    """Whole network, training mode with dropout (same seed): loss, every parameter gradient
    and BN running stats of the lean path equal the plain path's (float64: the rounding
    differences of the reordered sums stay far below any spike threshold)."""
    torch.manual_seed(0)
    nets = [LIFSNN(T=5, num_classes=4, frame_size=(16, 16), widths=widths, ps=ps, p=0.3,
                   reduction=1).double().train() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    set_lean(nets[1], False)
    x = (torch.rand(3, 5, 2, 16, 16) < 0.2).double() * 2.0
    res = []
    for net in nets:
        torch.manual_seed(1)
        out = net(x)
        loss = out.square().sum()
        loss.backward()
        res.append((out.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None},
                    {n: b for n, b in net.named_buffers()}))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=1e-12, atol=1e-12)
    assert res[0][1].keys() == res[1][1].keys()
    for n in res[0][1]:
        torch.testing.assert_close(res[0][1][n], res[1][1][n], rtol=1e-9, atol=1e-10, msg=n)
    for n in res[0][2]:
        torch.testing.assert_close(res[0][2][n], res[1][2][n], rtol=1e-12, atol=1e-12, msg=n)


def saved_bytes(net, x) -> int:
    """Bytes of distinct storages autograd keeps for backward after a forward."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    return sum(seen.values()), out


def test_lean_path_keeps_less_for_backward():
    """Arch A at T 12, 32x32: between forward and backward the lean path keeps everything the
    plain path keeps except ASA's inputs (rebuilt from BN's buffer in backward)."""
    torch.manual_seed(0)
    net = build_net("A", "fused", T=12, size=32).train()
    x, _ = make_batch(12, (32, 32), 2)
    lean, out_l = saved_bytes(net, x)
    set_lean(net, False)
    plain, out_p = saved_bytes(net, x)
    asa_inputs = 2 * 12 * 4 * (64 * 32 * 32 + 128 * 16 * 16 + 128 * 8 * 8)
    assert plain - lean >= 0.99 * asa_inputs, (plain, lean)
    assert out_l.shape == out_p.shape


def test_lean_step_peak_memory_is_far_lower():
    """Peak of live big tensors over one training step (the block cache's high-water mark,
    tensors of 4 MiB and more): the lean path also avoids the transients of the plain one
    (BN's output, the upsampled pool gradient, oneDNN's reordered copies)."""
    from utils import block_cache
    st = block_cache.stats()
    if not st or not st["installed"]:
        pytest.skip("the block cache is not PyTorch's allocator in this process")
    torch.manual_seed(0)
    net = build_net("A", "fused", T=12, size=32).train()
    x, y = make_batch(12, (32, 32), 8)
    peaks = {}
    for lean in (True, False):
        set_lean(net, lean)
        net.zero_grad(set_to_none=True)
        block_cache.reset_peaks()
        base = block_cache.stats()["live_bytes"]
        F.mse_loss(net(x), F.one_hot(y, 11).float()).backward()
        peaks[lean] = block_cache.stats()["high_water_bytes"] - base
    assert peaks[True] <= 0.75 * peaks[False], peaks


def test_lean_training_flag_reaches_every_conv_block():
    import config
    from models import create_net
    for argv, expected in (([], True), (["-lean_training", "false"], False), (["-lean_training"], True)):
        args = config.parse_args(["-arch", "A", *argv])
        net = create_net(args)
        flags = [b.lean for b in net.ConvAttLIFs]
        assert flags == [expected] * 3, (argv, flags)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_native_batch_norm_over_its_own_input_is_exact(layout):
    """_BatchNormAvgPool relies on aten.native_batch_norm.out with out= its input: statistics
    first, then an elementwise transform, so the result must equal the out-of-place call."""
    torch.manual_seed(0)
    y = (torch.randn(24, 7, 6, 6) * 3 + 1).contiguous(memory_format=layout)
    rm, rv = torch.zeros(7), torch.ones(7)
    rm2, rv2 = rm.clone(), rv.clone()
    out, mean, invstd = torch.native_batch_norm(y, None, None, rm, rv, True, 0.1, 1e-5)
    yy, m2, i2 = y.clone(), torch.empty(7), torch.empty(7)
    torch.ops.aten.native_batch_norm.out(yy, None, None, rm2, rv2, True, 0.1, 1e-5,
                                         out=yy, save_mean=m2, save_invstd=i2)
    for a, b in ((yy, out), (m2, mean), (i2, invstd), (rm2, rm), (rv2, rv)):
        assert torch.equal(a, b)
