"""Tracing: the ``Instructions`` object, its ``distil`` decorator and the sinks records go to.

Light on purpose: tracing runs inside production code and imports nothing heavy.
"""

from localdistil.trace.instructions import Instructions

__all__ = ["Instructions"]
