r"""Fused ASA re-weighting: the same output as ``models.module.Attn.ASA`` with ``backend="eager"``.

``ASAFunction.apply(x, m, w1, w2, lam)`` computes, for a given XOR mask ``m``::

    y = sigmoid(conv1(Ai)) * (M*x) + sigmoid(conv2(As)) * ((1-M)*x)

with the same operations in the same order as the eager definition (so ``y`` is bit-identical),
but as one autograd node: the masked copies xi, xs are temporaries and only ``x`` (plus
[N, 2, H, W]-sized maps) is saved, where autograd would keep xi and xs. Backward works in blocks
of time steps, so its temporaries are a block, not a copy of x. Masks are applied by multiplying
with 0/1 (exact, and vectorised where torch.where is a scalar loop on CPU)::

    g_gate_i[n,h,w] = sum_{t,c} M * g_y * x        (a matmul over T*C; the same for s with 1-M)
    g_x = M * (g_y*gate_i + c_i) + (1-M) * (g_y*gate_s + c_s) + max-pool terms at the argmax
    c_i = d(mean part)/dx = g_Ai[:, 0] / (lam * T*C),   c_s likewise with 1 - lam

The max over T*C routes its gradient to the first maximal element (T-major), as torch.max(dim)
does in the eager definition.
"""
import torch
import torch.nn.functional as F

from .blocks import blocks, steps_per_block


def _pool_tc_values(x: torch.Tensor, mean_scale: float) -> torch.Tensor:
    """[mean_TC(x)*scale, max_TC(x)] as [N, 2, H, W].

    max-with-indices over a non-innermost axis is a scalar loop on CPU; amax is vectorised, and
    the argmax is only needed in backward, where :func:`_first_argmax_tc` recovers it."""
    flat = x.flatten(1, 2)
    return torch.stack((flat.mean(1) * mean_scale, flat.amax(1)), dim=1)


def _first_argmax_tc(x, sel, vals, step):
    """Index over T*C of the FIRST element of (sel*x) equal to ``vals`` [N, H, W], per (n, h, w).

    The index torch.max(dim) returns (ties resolve to the first occurrence, T-major), found with
    vectorised ops, block by block: weight each hit by (T*C - position) and take the max."""
    N, T, C, H, W = x.shape
    best = torch.zeros((N, H * W), dtype=x.dtype, device=x.device)     # T*C - first index; 0 = none
    v = vals.reshape(N, 1, H * W)
    for t0, t1 in blocks(T, step):
        blk = (sel[:, t0:t1] * x[:, t0:t1]).reshape(N, (t1 - t0) * C, H * W)
        hit = torch.eq(blk, v, out=blk)
        pos = torch.arange(T * C - t0 * C, T * C - t1 * C, -1, dtype=x.dtype, device=x.device)
        torch.maximum(best, hit.mul_(pos.view(1, -1, 1)).amax(1), out=best)
    return (T * C - best).long().clamp_(max=T * C - 1)


def _conv_backward(grad_out, inp, weight):
    """(grad wrt inp, grad wrt weight) of conv2d(inp, weight, padding=1, no bias)."""
    gi, gw, _ = torch.ops.aten.convolution_backward(
        grad_out, inp, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, False])
    return gi, gw


class ASAFunction(torch.autograd.Function):
    """x: [N, T, C, H, W] contiguous; m: the 0/1 mask [N or 1, T, C, 1, 1]; w1, w2: [1, 2, 3, 3]."""

    @staticmethod
    def forward(ctx, x, m, w1, w2, lam: float):
        w1, w2 = w1.to(x.dtype), w2.to(x.dtype)
        xi = m * x
        a_i = _pool_tc_values(xi, 1.0 / lam)
        gate_i = torch.sigmoid(F.conv2d(a_i, w1, padding=1)).unsqueeze(1)   # [N, 1, 1, H, W]
        y = xi.mul_(gate_i)                                                 # g_i * xi, in place
        del xi
        xs = (1.0 - m) * x
        a_s = _pool_tc_values(xs, 1.0 / (1.0 - lam))
        gate_s = torch.sigmoid(F.conv2d(a_s, w2, padding=1)).unsqueeze(1)
        y.addcmul_(xs, gate_s)                                              # + g_s * xs
        ctx.save_for_backward(x, m, a_i, a_s, gate_i, gate_s, w1, w2)
        ctx.lam = lam
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, m, a_i, a_s, gate_i, gate_s, w1, w2 = ctx.saved_tensors
        lam = ctx.lam
        N, T, C, H, W = x.shape
        nm = m.shape[0]                                       # 1 (batch-union masks) or N
        m_rows = torch.stack((m, 1.0 - m), dim=1).reshape(nm, 2, T, C)
        step = steps_per_block(x)
        # 1. gradient reaching the two gates: masked sums of g_y * x over T*C
        gg = x.new_zeros((N, 2, H * W))
        for t0, t1 in blocks(T, step):
            p = (grad_y[:, t0:t1] * x[:, t0:t1]).reshape(N, (t1 - t0) * C, H * W)
            gg += torch.matmul(m_rows[:, :, t0:t1].reshape(nm, 2, -1), p)
            del p
        gg = gg.view(N, 2, 1, H, W)
        # 2. back through sigmoid and the 3x3 convs to the pooled maps and the weights
        gz_i = gg[:, 0] * gate_i[:, 0] * (1.0 - gate_i[:, 0])
        gz_s = gg[:, 1] * gate_s[:, 0] * (1.0 - gate_s[:, 0])
        ga_i, gw1 = _conv_backward(gz_i, a_i, w1)
        ga_s, gw2 = _conv_backward(gz_s, a_s, w2)
        c_i = (ga_i[:, 0] * (1.0 / lam) / (T * C)).unsqueeze(1).unsqueeze(1)   # [N, 1, 1, H, W]
        c_s = (ga_s[:, 0] * (1.0 / (1.0 - lam)) / (T * C)).unsqueeze(1).unsqueeze(1)
        # 3. input gradient, block by block: M*(g_y*gate_i + c_i) + (1-M)*(g_y*gate_s + c_s)
        grad_x = torch.empty_like(x)
        for t0, t1 in blocks(T, step):
            gy = grad_y[:, t0:t1]
            out = torch.addcmul(c_i, gy, gate_i).mul_(m[:, t0:t1])
            out.add_(torch.addcmul(c_s, gy, gate_s).mul_(1.0 - m[:, t0:t1]))
            grad_x[:, t0:t1] = out
            del out
        # 4. the max-pool terms: g_Ai[:, 1] to the argmax over T*C, times the mask there
        idx_i = _first_argmax_tc(x, m, a_i[:, 1], step)
        idx_s = _first_argmax_tc(x, 1.0 - m, a_s[:, 1], step)
        flat_g = grad_x.view(N, T * C, H * W)
        m_flat = m.reshape(nm, T * C).expand(N, T * C)
        for idx, ga, sel in ((idx_i, ga_i, m_flat), (idx_s, ga_s, 1.0 - m_flat)):
            idx = idx.reshape(N, 1, H * W)
            vals = ga[:, 1].reshape(N, 1, H * W) * sel.gather(1, idx[:, 0]).unsqueeze(1)
            flat_g.scatter_add_(1, idx, vals)
        return grad_x, None, gw1, gw2, None
