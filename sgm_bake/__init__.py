"""sgm-bake: fold SGM/AurA toxic-neuron suppression into multimodal LLM checkpoints.

The public names are imported lazily so that `sgm-bake --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "SGMError": "sgm_bake.errors",
    "Expertise": "sgm_bake.core.expertise",
    "load_expertise": "sgm_bake.core.expertise",
    "save_expertise": "sgm_bake.core.expertise",
    "SGMHooks": "sgm_bake.core.hooks",
    "apply_hooks": "sgm_bake.core.hooks",
    "bake": "sgm_bake.pipeline.bake",
    "BakeOptions": "sgm_bake.pipeline.bake",
    "auroc": "sgm_bake.core.rules",
    "RuleOptions": "sgm_bake.core.rules",
    "factors": "sgm_bake.core.rules",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sgm_bake' has no attribute {name!r}")
