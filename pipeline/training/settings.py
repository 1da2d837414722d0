"""A method's training settings: built-in defaults < ``finetune`` < ``methods.<method>``."""
from __future__ import annotations

import copy
from typing import Any

# Used when neither `finetune` nor the method sets a key. Fine-tuning defaults,
# not timm's pretraining ones (no label smoothing, no weight decay, BN frozen).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 4, "batch_size": 64, "warmup_epochs": 0.5, "label_smoothing": 0.0, "grad_clip": 0.0, "bn": "eval",
    "weight_decay": 0.0, "momentum": 0.9, "betas": [0.9, 0.999],
}


def method_settings(cfg: dict, method: str) -> dict:
    """Resolved settings of ``method`` (a deep copy; safe to modify)."""
    return {**TRAIN_DEFAULTS, **copy.deepcopy(cfg.get("finetune", {})), **copy.deepcopy(cfg["methods"][method])}
