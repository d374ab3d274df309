"""Hyper-parameter sanity checks every loader applies to the config it produced.

A value outside these bounds is a corrupt or hostile file, not a model: a NaN epsilon or
a rope base of 1e38 would load and then generate garbage, and a context of 2**40 would
fail deep inside an allocation. Bounds sit far beyond any published model.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import ModelFormatError
from ..models.config import ModelConfig

#: (field, low, high, low_inclusive): finite floats.
_REALS = (
    ("norm_eps", 0.0, 1.0, False),
    ("rope_theta", 1.0, 1e10, False),
    ("rope_theta_local", 1.0, 1e10, False),
    ("rope_scale", 0.0, 1e6, False),
    ("embed_scale", 0.0, 1e6, False),
    ("final_logit_softcap", 0.0, 1e6, True),
)
#: (field, high): integers in [1, high] (sliding_window may be 0).
_INTS = (
    ("vocab_size", 1 << 24), ("n_ctx", 1 << 24), ("n_embd", 1 << 16), ("n_layer", 1 << 12),
    ("n_head", 1 << 12), ("n_kv_head", 1 << 12), ("head_dim", 1 << 12), ("n_hidden", 1 << 18),
)


def check_hyperparameters(config: ModelConfig, path: Path | None = None) -> None:
    """Raise :class:`ModelFormatError` naming the field and value if ``config`` is not sane."""
    def bad(name: str, value: object, rule: str) -> ModelFormatError:
        return ModelFormatError(f"hyper-parameter {name}={value!r} must be {rule}", path=path,
                                key=name)

    for name, high in _INTS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise bad(name, value, f"an integer in [1, {high}]")
    window = config.sliding_window
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 1 << 24:
        raise bad("sliding_window", window, f"an integer in [0, {1 << 24}]")
    for name, low, top, inclusive in _REALS:
        real = getattr(config, name)
        ok = isinstance(real, (int, float)) and math.isfinite(real) and real <= top and (
            real >= low if inclusive else real > low)
        if not ok:
            raise bad(name, real, f"finite, in {'[' if inclusive else '('}{low:g}, {top:g}]")
    scale = config.attn_scale
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)
                                  and 0 < scale <= 1e3):
        raise bad("attn_scale", scale, "None or finite, in (0, 1e3]")
    rope_dim = config.extra.get("rope_dim")
    if rope_dim is not None and not (isinstance(rope_dim, int) and 2 <= rope_dim <= config.head_dim
                                     and rope_dim % 2 == 0):
        raise bad("rope_dim", rope_dim, f"an even integer in [2, head_dim={config.head_dim}]")
