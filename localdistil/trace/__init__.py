"""Tracing: the ``Instructions`` object, its ``distil`` decorator, its modes and the sinks
records go to.

Light on purpose: tracing runs inside production code and imports nothing heavy.
"""

from localdistil.trace.instructions import Instructions
from localdistil.trace.wrappers import (
    AutoFunction,
    DispatchedFunction,
    DistilledFunction,
    ShadowedFunction,
)

__all__ = ["AutoFunction", "DispatchedFunction", "DistilledFunction", "Instructions",
           "ShadowedFunction"]
