"""The record format: build a traced call's record, read records back (localdistil's own
files, instructor's and OpenAI chat fine-tuning files), and summarise them."""

from localdistil.records.build import FINETUNE_FORMATS, RECORD_VERSION, RecordBuilder
from localdistil.records.read import expand_paths, parse_line, read_records
from localdistil.records.record import Record, RecordProblem, RecordSet
from localdistil.records.summary import FunctionSummary, summarize_records

__all__ = [
    "FINETUNE_FORMATS",
    "RECORD_VERSION",
    "FunctionSummary",
    "Record",
    "RecordBuilder",
    "RecordProblem",
    "RecordSet",
    "expand_paths",
    "parse_line",
    "read_records",
    "summarize_records",
]
