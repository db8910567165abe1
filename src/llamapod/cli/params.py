"""Flag types that refuse what click's own ranges let through."""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloatRange(click.FloatRange):
    """A float flag that refuses nan and +-inf.

    click's FloatRange compares the value with its bounds, and nan compares false with
    everything, so ``--temperature nan`` passes ``min=0`` and fails deep inside torch.
    """

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# torch.Generator.manual_seed takes a 64-bit value; a larger one is an OverflowError there.
SEED = click.IntRange(min=0, max=2**64 - 1)
