"""Documents -> chunks -> typed questions and answers from a teacher -> training records.

    python -m localdistil synth examples/docs_qa/synth.yaml

Each module does one job:

- :mod:`~localdistil.sources.recipe`: the synth recipe (:class:`SynthRecipe`), every key
  documented where it is declared (read as :mod:`localdistil.config` reads every recipe);
- :mod:`~localdistil.sources.load`: files, globs and directories -> documents, skips explained;
- :mod:`~localdistil.sources.chunk`: documents -> chunks with provenance, sized in tokens or
  characters;
- :mod:`~localdistil.sources.templates`: the default prompt text of the teacher;
- :mod:`~localdistil.sources.teacher`: the teacher: the engine on a local model, or an
  OpenAI-compatible server;
- :mod:`~localdistil.sources.filters`: duplicates, unanswerable and ungrounded answers;
- :mod:`~localdistil.sources.output`: the output directory: whole lines, repaired after a kill;
- :mod:`~localdistil.sources.synth`: the pipeline, :func:`synthesize`, resumable.
"""

from localdistil.sources.chunk import Chunk, chunk_documents, chunk_spans
from localdistil.sources.filters import REASONS, Reject
from localdistil.sources.load import Document, Loaded, Skipped, load_documents, load_file
from localdistil.sources.recipe import SynthRecipe, load_synth_recipe, parse_synth_recipe
from localdistil.sources.synth import SynthReport, show_prompts, synthesize
from localdistil.sources.teacher import (
                                         LocalTeacher,
                                         RemoteTeacher,
                                         Teacher,
                                         TeacherAnswer,
                                         questions_type,
)

__all__ = [
    "REASONS",
    "Chunk",
    "Document",
    "Loaded",
    "LocalTeacher",
    "Reject",
    "RemoteTeacher",
    "Skipped",
    "SynthRecipe",
    "SynthReport",
    "Teacher",
    "TeacherAnswer",
    "chunk_documents",
    "chunk_spans",
    "load_documents",
    "load_file",
    "load_synth_recipe",
    "parse_synth_recipe",
    "questions_type",
    "show_prompts",
    "synthesize",
]
