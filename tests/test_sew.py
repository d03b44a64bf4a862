"""SEW-ResNet-18 (-arch sew18): shapes, ASA placement, the ADD connection, one training step."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models import ARCHITECTURES, create_net
from models.module.Attn import ASA
from models.sew_resnet import SEWBasicBlock, SEWResNet18
from utils.errors import UserError
from utils.run.metrics import spiking_layers


def args(**kw):
    a = dict(arch="sew18", T=2, num_classes=300, attention="ASA", reduction=1, lam=0.5,
             asa_mask="reference", ps="00000", frame_size=(173, 130), backend="fused")
    a.update(kw)
    return SimpleNamespace(**a)


def test_registered_and_davis346_shapes():
    assert "sew18" in ARCHITECTURES
    net = create_net(args()).eval()
    assert isinstance(net, SEWResNet18)
    # 1 stem + 8 blocks x 2 + 3 downsample neurons; an ASA before each
    assert len(spiking_layers(net)) == 20
    asas = [m for m in net.modules() if isinstance(m, ASA)]
    assert len(asas) == 20 and {a.T for a in asas} == {2}
    assert sorted({a.channels for a in asas}) == [64, 128, 256, 512]
    with torch.no_grad():
        y = net(torch.rand(1, 2, 2, 173, 130))           # DAVIS346 at ds 2
    assert y.shape == (1, 300) and torch.isfinite(y).all()


def test_any_frame_size_and_no_attention():
    net = create_net(args(attention="no", num_classes=5, T=3)).eval()
    assert not any(isinstance(m, ASA) for m in net.modules())
    with torch.no_grad():
        for hw in ((87, 65), (32, 32), (20, 28)):
            assert net(torch.rand(2, 3, 2, *hw)).shape == (2, 5)


def test_add_connection():
    block = SEWBasicBlock(4, 4, 1, lambda c: torch.nn.Identity(), lambda: torch.nn.Identity())
    block.eval()
    x = (torch.rand(1, 2, 4, 6, 6) > 0.5).float()
    with torch.no_grad():
        out = block(x)
        res = block.conv2(block.conv1(x))
    torch.testing.assert_close(out, res + x)             # identity shortcut added element-wise
    down = SEWBasicBlock(4, 8, 2, lambda c: torch.nn.Identity(), lambda: torch.nn.Identity())
    assert down.downsample is not None and down.eval()(x).shape == (1, 2, 8, 3, 3)


def test_training_step_updates_weights():
    torch.manual_seed(0)
    net = create_net(args(T=4, frame_size=(64, 48)))
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.poisson(torch.full((2, 4, 2, 64, 48), 0.5))         # event counts
    target = F.one_hot(torch.tensor([3, 299]), 300).float()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = F.mse_loss(net(x), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert net.stem.conv.weight.grad.abs().sum() > 0
    assert net.fc.bias.grad.abs().sum() > 0
    assert net.layer1[0].conv1.conv.weight.grad.abs().sum() > 0
    assert net.stem.sn.w.grad is not None                    # PLIF time constants learn too
    opt.step()
    changed = [n for n, p in net.named_parameters() if not torch.equal(p, before[n])]
    assert {"stem.conv.weight", "fc.bias", "layer1.0.conv1.conv.weight"} <= set(changed)


def test_incompatible_reduction_is_refused():
    """The command line refuses it with one line naming the flags; the model itself raises."""
    import config
    with pytest.raises(UserError, match="-T 2 is not compatible with -reduction 4"):
        config.parse_args(["-arch", "sew18", "-T", "2", "-reduction", "4"])
    with pytest.raises(ValueError, match="reduction"):
        create_net(args(T=2, reduction=4))
