"""Networks: ``create_net(args)`` builds the architecture named by ``args.arch``.

Every module of this package is imported here, and each architecture module registers its own
builders with :func:`models.registry.register` (lif_snn.py: A, D; plif_snn.py: B, C;
sew_resnet.py: sew18), so adding a file is all a new architecture needs (docs/architecture.md).
Shared layers (ASA, the neurons) live in models/module/, the fused backend in models/fused/.
"""
import importlib
import pkgutil

from .registry import ARCHITECTURES, architecture, create_meta_net, create_net, register
from .weights import load_pretrained, match_state

for _info in pkgutil.iter_modules(__path__):
    if not _info.ispkg and _info.name not in ("registry", "weights"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ARCHITECTURES", "architecture", "create_meta_net", "create_net", "register", "load_pretrained", "match_state"]
