"""localdistil: distil a Python function that returns a Pydantic model into a small open model
that runs on your own hardware.

    trace (@Instructions.distil) -> records (JSONL) -> dataset -> train (LoRA) -> dispatch

Importing localdistil is cheap: torch, transformers and friends are imported only by the
functions that train or generate.
"""

from localdistil.errors import (
    AdapterError,
    AdapterMismatchError,
    DatasetError,
    DecorationError,
    DispatchError,
    LocaldistilError,
    ModelError,
    RecipeError,
    RecordError,
    ToolCallError,
    TraceError,
    TraceWarning,
)
from localdistil.records import Record, RecordSet, read_records
from localdistil.spec import FunctionSpec
from localdistil.trace import (
    AutoFunction,
    AutoPolicy,
    DispatchedFunction,
    DistilledFunction,
    Instructions,
    ShadowedFunction,
    ToolCall,
    Toolset,
    ToolsetResult,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterError",
    "AdapterMismatchError",
    "AutoFunction",
    "AutoPolicy",
    "DatasetError",
    "DecorationError",
    "DispatchError",
    "DispatchedFunction",
    "DistilledFunction",
    "FunctionSpec",
    "Instructions",
    "LocaldistilError",
    "ModelError",
    "RecipeError",
    "Record",
    "RecordError",
    "RecordSet",
    "ShadowedFunction",
    "ToolCall",
    "ToolCallError",
    "Toolset",
    "ToolsetResult",
    "TraceError",
    "TraceWarning",
    "__version__",
    "read_records",
]
