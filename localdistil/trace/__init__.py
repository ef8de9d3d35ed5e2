"""Tracing: the ``Instructions`` object, its ``distil`` decorator, its modes and the sinks
records go to; and ``Toolset``, the same for calls of several tools.

Light on purpose: tracing runs inside production code and imports nothing heavy.
"""

from localdistil.inference.tools import ToolCall, ToolsetResult
from localdistil.trace.auto_state import AutoPolicy
from localdistil.trace.instructions import Instructions
from localdistil.trace.toolset import Toolset
from localdistil.trace.wrappers import (
    AutoFunction,
    DispatchedFunction,
    DistilledFunction,
    ShadowedFunction,
)

__all__ = ["AutoFunction", "AutoPolicy", "DispatchedFunction", "DistilledFunction", "Instructions",
           "ShadowedFunction", "ToolCall", "Toolset", "ToolsetResult"]
