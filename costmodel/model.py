"""Compatibility re-exports of the whole-model step, now split into one module per job:

- `costmodel.optimizer`: `Precision`, `PRECISIONS`, `resolve_precision`, the optimizer
  constants and `optimizer_cost`;
- `costmodel.step`: `StepSpec`, `StepCost`, `build_step`, `step_cost` and the parts' costs;
- `costmodel.steptime`: `Efficiency`, `UNFITTED`, `FittedRates`, `FIT_KEYS`, `efficiency_for`,
  `StepTime`, `step_time`.

New code imports from those modules; this one defines nothing.
"""

from costmodel.optimizer import (
    ADAMW_FLOPS_PER_PARAM,
    ADAMW_TRANSCENDENTALS_PER_PARAM,
    OPTIMIZER_STATES,
    PRECISIONS,
    SGD_FLOPS_PER_PARAM,
    Precision,
    optimizer_cost,
    resolve_precision,
)
from costmodel.step import PARTS, StepCost, StepSpec, build_step, step_cost
from costmodel.step_ends import TOKEN_ID_BYTES
from costmodel.steptime import (
    FIT_KEYS,
    UNFITTED,
    Efficiency,
    FittedRates,
    StepTime,
    efficiency_for,
    step_time,
)
from costmodel.vocab import METHODS, OPTIMIZERS

__all__ = [
    "ADAMW_FLOPS_PER_PARAM", "ADAMW_TRANSCENDENTALS_PER_PARAM", "Efficiency", "FIT_KEYS", "FittedRates",
    "METHODS", "OPTIMIZERS", "OPTIMIZER_STATES", "PARTS", "PRECISIONS", "Precision", "SGD_FLOPS_PER_PARAM",
    "StepCost", "StepSpec", "StepTime", "TOKEN_ID_BYTES", "UNFITTED", "build_step", "efficiency_for",
    "optimizer_cost", "resolve_precision", "step_cost", "step_time",
]
