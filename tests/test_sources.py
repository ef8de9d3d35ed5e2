"""The document pipeline: load -> chunk -> teacher -> filters -> records (``localdistil.sources``).

Most tests drive the pipeline with :class:`ScriptedTeacher`, a teacher whose questions and
answers follow from the chunk (so every filter and every reject reason is reached on purpose);
the local engine and an OpenAI-compatible server (``localdistil serve`` on the tiny model) are
the teachers of their own tests, which assert on mechanics: the tiny model's text is noise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from serving import running

from localdistil import RecipeError
from localdistil.inference.engine import Outcome
from localdistil.sources import (
    REASONS,
    TeacherAnswer,
    chunk_documents,
    chunk_spans,
    load_documents,
    load_file,
    load_synth_recipe,
    parse_synth_recipe,
    show_prompts,
    synthesize,
)
from localdistil.sources.chunk import Characters, Tokens, content_hash
from localdistil.sources.filters import (
    QuestionFilter,
    check_answer,
    content_words,
    grounding,
    jaccard,
    normalise,
)
from localdistil.sources.synth import load_chunks
from localdistil.sources.teacher import RemoteTeacher, questions_type
from localdistil.spec import FunctionSpec

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60

# -- a teacher that follows a script -------------------------------------------------------------

#: The templates the scripted teacher parses: the chunk between << >>, then the question.
TEMPLATES = {"questions": {"system": "", "user": "<<{chunk}>>"},
             "answers": {"system": "", "user": "<<{chunk}>>{question}"}}


class ScriptedTeacher:
    """Per chunk: a question of its own (answered with the chunk's first sentence: grounded),
    "What is the weather like?" (not answerable) and "Tell me about bananas?" (answered with
    words the chunk lacks). A chunk containing BUDGET or INVALID gets no questions, for that
    reason; a question about a chunk containing SLOWANSWER sleeps ``delay`` seconds."""

    name = "scripted"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.asked: list[str] = []

    def ask(self, conversations, output_type, *, max_tokens):
        outcomes = []
        for messages in conversations:
            chunk, _, question = messages[-1]["content"][2:].partition(">>")
            if output_type is TeacherAnswer:
                time.sleep(self.delay)
                outcomes.append(self._answer(chunk, question))
                continue
            self.asked.append(chunk)
            if "BUDGET" in chunk:
                outcomes.append(Outcome("budget", '{"questions":["What', prompt_tokens=3,
                                        completion_tokens=max_tokens))
                continue
            if "INVALID" in chunk:
                outcomes.append(Outcome("invalid", '{"questions":[]}',
                                        error="questions: too short"))
                continue
            count = output_type.model_json_schema()["properties"]["questions"]["maxItems"]
            value = output_type(questions=[f"What does {content_hash(chunk)[:10]} say?",
                                           "What is the weather like?",
                                           "Tell me about bananas?"][:count])
            outcomes.append(Outcome("ok", value.model_dump_json(), value=value, prompt_tokens=7,
                                    completion_tokens=5))
        return outcomes

    @staticmethod
    def _answer(chunk: str, question: str) -> Outcome:
        if "weather" in question:
            value = TeacherAnswer(answerable=False, answer="")
        elif "bananas" in question:
            value = TeacherAnswer(answerable=True, answer="Bananas grow in tropical orchards.")
        else:
            value = TeacherAnswer(answerable=True, answer=chunk.split(". ")[0])
        return Outcome("ok", value.model_dump_json(), value=value, prompt_tokens=11,
                       completion_tokens=6)


def write_docs(directory: Path, texts: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


DOCS = {
    "alpha.md": "Alpha ships adapters. Each adapter holds a manifest.\n\n"
                "The manifest records the base model and the prompt style.",
    "beta.txt": "Beta trains with LoRA on a small model. Training writes checkpoints.\n\n"
                "Checkpoints are kept for resuming a run. BUDGET marks this paragraph.",
    "gamma.rst": "Gamma serves the model over HTTP. Clients send chat requests.\n\n"
                 "INVALID answers are retried. Requests are batched together.",
}


def recipe_for(tmp_path, *, docs=None, **sections):
    """A recipe over ``docs`` (default :data:`DOCS`) in characters, with the scripted
    teacher's templates; ``sections`` update sections."""
    root = write_docs(tmp_path / "docs", DOCS if docs is None else docs)
    data = {"source": {"paths": [str(root)]},
            "chunk": {"unit": "characters", "size": 80, "overlap": 30},
            "teacher": {"model": "unused", "batch_size": 2},
            "questions": dict(TEMPLATES["questions"]), "answers": dict(TEMPLATES["answers"]),
            "output": {"dir": str(tmp_path / "out")}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_synth_recipe(data)


def lines(path: Path) -> list[dict]:
    """Every line of a JSONL file, each checked to be whole JSON."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    assert not text or text.endswith("\n"), f"{path} ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


# -- loading -------------------------------------------------------------------------------------


def test_loading_skips_empty_binary_and_undecodable_files_with_the_reason(tmp_path):
    root = write_docs(tmp_path / "d", {"good.md": "# Title\n\nSome text.", "empty.txt": "",
                                       "blank.md": "  \n\n ", "notes.py": "x = 1"})
    (root / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / ".hidden.md").write_text("secret", encoding="utf-8")

    loaded = load_documents([str(root)])

    assert [Path(d.path).name for d in loaded.documents] == ["good.md"]  # .py not searched
    reasons = {Path(s.path).name: s.reason for s in loaded.skipped}
    assert reasons["empty.txt"] == "empty" and reasons["blank.md"] == "only whitespace"
    assert reasons["image.md"].startswith("binary")
    assert reasons["latin1.txt"] == "not UTF-8 (byte 0xe9 at offset 3)"
    assert set(reasons) == {"empty.txt", "blank.md", "image.md", "latin1.txt"}


def test_a_pattern_that_matches_nothing_names_the_key(tmp_path):
    with pytest.raises(RecipeError, match="source.paths: no file matches") as caught:
        load_documents([str(tmp_path / "*.md")])
    assert caught.value.key == "source.paths"
    with pytest.raises(RecipeError, match="no such file or directory"):
        load_documents([str(tmp_path / "missing.md")])


def test_html_is_reduced_to_its_visible_text_and_jsonl_to_a_field(tmp_path):
    html = ("<html><head><title>T</title><style>p {color: red}</style></head><body>"
            "<h1>Install &amp; run</h1><p>Run <code>make</code>\n   now.</p>"
            "<script>alert(1)</script><ul><li>one</li><li>two</li></ul></body></html>")
    rows = [{"text": "First record."}, {"body": "no text"}, "not json", {"text": "  "},
            {"text": "Second record."}]
    root = write_docs(tmp_path / "d", {
        "page.html": html,
        "rows.jsonl": "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows)})

    loaded = load_documents([str(root)])

    page, first, second = loaded.documents
    assert page.text == "Install & run\n\nRun make now.\n\none\n\ntwo"
    assert (first.text, first.line, second.text, second.line) == (
        "First record.", 1, "Second record.", 5)
    assert [s.path.rsplit(":", 1)[1] for s in loaded.skipped] == ["2", "3", "4"]
    assert "no text in field 'text'" in loaded.skipped[0].reason
    assert load_file(second.path, line=5) == second


def test_crlf_and_a_byte_order_mark_read_as_path_read_text_does(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbfOne line.\r\nTwo line.\r\n")

    (document,) = load_documents([str(path)]).documents

    assert document.text == "One line.\nTwo line.\n" == path.read_text(encoding="utf-8-sig")


# -- chunking ------------------------------------------------------------------------------------


def test_overlap_not_smaller_than_size_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(ValueError, match="overlap"):
        chunk_spans("some text", Characters(), 10, 10)
    with pytest.raises(RecipeError) as caught:
        recipe_for(tmp_path, chunk={"size": 64, "overlap": 64})
    assert caught.value.key == "chunk.overlap"
    assert "chunk.overlap (64) must be smaller than chunk.size (64)" in str(caught.value)


def test_chunks_keep_their_provenance_back_to_the_source_text(tmp_path):
    sentences = " ".join(f"Sentence number {i} talks about item {i}." for i in range(40))
    text = f"# Heading\n\n{sentences}\n\n\n  Closing paragraph here.\r\n"
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8", newline="")
    html = tmp_path / "doc.html"
    html.write_text(f"<p>{sentences}</p><p>End.</p>", encoding="utf-8")

    loaded = load_documents([str(path), str(html)])
    chunks = chunk_documents(loaded.documents, Characters(), size=200, overlap=60)

    source = path.read_text(encoding="utf-8-sig")
    for chunk in chunks:
        document = load_file(chunk.path, line=chunk.line)
        assert document.text[chunk.start:chunk.end] == chunk.text
        assert chunk.hash == content_hash(chunk.text)
        assert chunk.text == chunk.text.strip() and len(chunk.text) <= 200
        if chunk.path == loaded.documents[0].path:
            assert source[chunk.start:chunk.end] == chunk.text
    md = [c for c in chunks if c.path.endswith(".md")]
    assert [c.index for c in md] == list(range(len(md)))
    covered = set()  # every word of the document is in some chunk
    for c in md:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(source) if not ch.isspace())
    overlaps = [a.end - b.start for a, b in zip(md, md[1:])]
    assert max(overlaps) > 0 and all(o <= 60 for o in overlaps)
    assert all(c.text.endswith(".") or c.text == "# Heading" for c in md)  # sentence ends


def test_chunks_end_at_paragraphs_where_that_keeps_half_a_chunk():
    paragraph = "Short sentence here. " * 4
    text = "\n\n".join(paragraph.strip() for _ in range(3))

    spans = chunk_spans(text, Characters(), 150, 0)

    assert [text[a:b] for a, b in spans] == [paragraph.strip()] * 3


def test_one_huge_line_without_spaces_is_cut_at_the_size(tmp_path):
    assert chunk_spans("x" * 1000, Characters(), 300, 50) == [
        (0, 300), (300, 600), (600, 900), (900, 1000)]
    words = chunk_spans("word " * 400, Characters(), 100, 20)
    assert all(b - a <= 100 for a, b in words) and len(words) > 20


def test_token_sizes_count_the_students_tokens(tiny_model_dir):
    from localdistil.models.resolve import load_tokenizer

    measure = Tokens(load_tokenizer(tiny_model_dir))
    text = "\n\n".join(" ".join(f"Token counting sentence {i}-{j}." for j in range(30))
                       for i in range(5)) + "\n\n" + "z" * 3000

    spans = chunk_spans(text, measure, 64, 16)

    assert all(measure.length(text[a:b]) <= 64 for a, b in spans)
    assert spans[-1][1] == len(text)
    assert measure.cuts("z" * 3000, 64)  # the token-less line was cut by token offsets


# -- filters -------------------------------------------------------------------------------------


def test_duplicates_are_exact_after_normalising_and_near_by_word_overlap():
    questions = QuestionFilter(0.8)
    questions.accept("What is an adapter?")

    assert normalise("  What IS an   adapter?! ") == "what is an adapter"
    assert questions.check("what is an ADAPTER") == ("duplicate", "same as 'What is an adapter?'")
    reason, detail = questions.check("What is an adapter, really?")
    assert reason == "near_duplicate" and "0.80 >= 0.8" in detail
    assert questions.check("What is a manifest?") is None
    assert questions.check("?!") == ("empty", "the question has no words")
    assert jaccard({"a"}, {"b"}) == 0 and jaccard(set(), set()) == 1


def test_grounding_is_the_share_of_content_words_found_in_the_chunk():
    chunk = "The manifest records the base model and the prompt style."

    assert content_words("The manifests of the models") == {"manifest", "model"}
    assert grounding("It records the base models.", chunk) == 1.0
    assert grounding("It records bananas.", chunk) == 0.5
    assert grounding("Yes, it is.", chunk) == 1.0  # no content words: nothing unsupported
    assert check_answer(False, "", chunk, 0.5)[0] == "not_answerable"
    assert check_answer(True, "  ", chunk, 0.5)[0] == "empty"
    reason, detail = check_answer(True, "Bananas and apples.", chunk, 0.5)
    assert reason == "not_grounded" and "apple, banana" in detail
    assert check_answer(True, "Bananas and apples.", chunk, 0.0) is None


# -- the pipeline ------------------------------------------------------------------------------


def test_every_item_is_a_record_or_a_counted_reject(tmp_path):
    recipe = recipe_for(tmp_path)

    report = synthesize(recipe, teacher=ScriptedTeacher())

    out = Path(recipe.output.dir)
    records, rejects, done = (lines(out / name) for name in
                              ("records.jsonl", "rejects.jsonl", "done.jsonl"))
    assert report.documents == 3 and report.generated == report.chunks == len(done) > 3
    assert len(records) == report.records == report.records_total
    counted = {reason: sum(r["reason"] == reason for r in rejects) for reason in REASONS}
    assert counted == report.rejects
    chunks, _ = load_chunks(recipe)
    budget = sum("BUDGET" in c.text for c in chunks)
    invalid = sum("INVALID" in c.text and "BUDGET" not in c.text for c in chunks)
    good = len(chunks) - budget - invalid
    assert budget >= 1 and invalid >= 1 and good >= 3
    assert counted == {"budget": budget, "invalid": invalid, "empty": 0,
                       "duplicate": 2 * (good - 1), "near_duplicate": 0,
                       "not_answerable": 1, "not_grounded": 1}  # the first time, then duplicates
    assert report.records == good  # each chunk's own question
    assert (report.questions_asked, report.questions) == (3 * len(chunks), 3 * good)
    for record in records:
        block = record["localdistil"]
        extra = block["extra"]
        chunk_text = load_file(extra["path"]).text[extra["start"]:extra["end"]]
        assert content_hash(chunk_text) == extra["chunk_hash"]
        assert block["args"]["question"] == f"What does {extra['chunk_hash'][:10]} say?"
        assert chunk_text.startswith(block["output"]["answer"])
        assert block["signature"] == "def answer(question: str) -> Answer"
    assert "Records" not in report.format() and "not_grounded" in report.format()


def test_records_are_what_records_stats_and_training_take(tmp_path, tiny_model_dir, capsys):
    from localdistil.cli import main
    from localdistil.models.resolve import load_tokenizer
    from localdistil.training.dataset import build_dataset, select_records
    from localdistil.training.recipe import parse_recipe

    recipe = recipe_for(tmp_path)
    report = synthesize(recipe, teacher=ScriptedTeacher())
    train = parse_recipe({"model": str(tiny_model_dir), "data": {
        "train": [str(report.records_path)], "function": "answer", "eval_fraction": 0}})

    selection = select_records(train)
    data = build_dataset(selection, load_tokenizer(tiny_model_dir), train)

    assert len(selection.train) == len(data.train) == report.records
    row = data.train[0]
    assert json.loads(row["completion"][0]["content"])["answer"]
    assert row["prompt"][-1]["content"].startswith('answer(question="What does ')
    assert main(["records", "stats", str(report.records_path)]) == 0
    assert f"records          {report.records}" in capsys.readouterr().out


def test_the_synthesised_function_is_the_one_dispatch_declares():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_qa_dispatch",
                                                  ROOT / "examples/docs_qa/dispatch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe = load_synth_recipe(ROOT / "examples/docs_qa/synth.yaml")

    made = FunctionSpec.from_function(recipe.function.make())
    declared = FunctionSpec.from_function(module.answer)

    assert made.fingerprint == declared.fingerprint
    assert made.signature == "def answer(question: str) -> Answer"


def test_a_rerun_skips_done_chunks_and_refuses_other_settings(tmp_path):
    recipe = recipe_for(tmp_path, chunk={"max_chunks": 3})
    first = synthesize(recipe, teacher=ScriptedTeacher())
    everything = recipe_for(tmp_path)

    teacher = ScriptedTeacher()
    second = synthesize(everything, teacher=teacher)

    assert (second.done_before, second.generated) == (3, second.chunks - 3)
    assert len(teacher.asked) == second.chunks - 3  # done chunks were not asked again
    assert second.records_total == first.records + second.records
    assert lines(Path(recipe.output.dir) / "records.jsonl")  # appended, whole
    assert second.rejects["duplicate"] > 0  # earlier runs' questions are remembered
    again = synthesize(everything, teacher=teacher)
    assert (again.generated, again.records) == (0, 0)

    other = recipe_for(tmp_path, questions={"per_chunk": 2})
    with pytest.raises(RecipeError, match="questions.per_chunk changed") as caught:
        synthesize(other, teacher=teacher)
    assert caught.value.key == "output.dir"
    fresh = synthesize(other, teacher=ScriptedTeacher(), overwrite=True)
    assert fresh.done_before == 0 and fresh.records_total == fresh.records


def test_a_torn_line_and_the_lines_of_an_unfinished_chunk_are_dropped_on_resume(tmp_path):
    recipe = recipe_for(tmp_path)
    synthesize(recipe, teacher=ScriptedTeacher())
    out = Path(recipe.output.dir)
    done = lines(out / "done.jsonl")
    lost = done[-2]  # a chunk whose records were written, but not its line in done.jsonl
    (out / "done.jsonl").write_text("".join(json.dumps(d) + "\n" for d in done[:-2] + done[-1:])
                                    + '{"chunk_hash": "ab', encoding="utf-8")
    with open(out / "records.jsonl", "a", encoding="utf-8") as file:
        file.write('{"messages": [{"role": "sys')  # killed mid-line

    report = synthesize(recipe, teacher=ScriptedTeacher())

    assert report.generated == 1
    records = lines(out / "records.jsonl")
    keys = [(r["localdistil"]["extra"]["chunk_hash"], r["localdistil"]["args"]["question"])
            for r in records]
    assert len(keys) == len(set(keys))  # the lost chunk's records were dropped, then redone
    assert sum(k[0] == lost["chunk_hash"] for k in keys) == lost["records"]
    hashes = [d["chunk_hash"] for d in lines(out / "done.jsonl")]
    assert sorted(hashes) == sorted(set(hashes)) and len(hashes) == len(done)


def test_a_killed_run_resumes_with_no_torn_line_and_no_chunk_twice(tmp_path):
    docs = {f"doc{i}.md": f"Document {i} SLOWANSWER explains topic {i}. It has a second "
                          f"sentence about topic {i}." for i in range(8)}
    recipe = recipe_for(tmp_path, docs=docs, teacher={"batch_size": 1})
    recipe_file = tmp_path / "synth.json"
    recipe_file.write_text(json.dumps(recipe.as_dict()), encoding="utf-8")
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_sources import ScriptedTeacher\n"
        "from localdistil.sources import parse_synth_recipe, synthesize\n"
        f"recipe = parse_synth_recipe(json.load(open({str(recipe_file)!r})))\n"
        "synthesize(recipe, teacher=ScriptedTeacher(delay=0.15))\n")
    done_path = Path(recipe.output.dir) / "done.jsonl"
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (done_path.exists() and len(done_path.read_text().splitlines()) >= 3):
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk was done within the timeout"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=TIMEOUT)
    assert child.returncode == -signal.SIGKILL
    finished_before = len(lines(done_path))
    assert 3 <= finished_before < 8

    report = synthesize(recipe, teacher=ScriptedTeacher())

    assert report.done_before == finished_before and report.generated == 8 - finished_before
    out = Path(recipe.output.dir)
    records, rejects, done = (lines(out / n) for n in ("records.jsonl", "rejects.jsonl",
                                                        "done.jsonl"))
    assert len({d["chunk_hash"] for d in done}) == len(done) == 8
    per_chunk = {d["chunk_hash"]: d for d in done}
    for name, items, key in (("records", records, lambda r: r["localdistil"]["extra"]),
                             ("rejects", rejects, lambda r: r["chunk"])):
        for chunk_hash, entry in per_chunk.items():
            found = sum(key(item)["chunk_hash"] == chunk_hash for item in items)
            assert found == entry[name], (name, entry)


# -- teachers ----------------------------------------------------------------------------------


def test_the_local_engine_teacher_on_the_tiny_model(tmp_path, tiny_model_dir):
    from localdistil.cli import main

    recipe = recipe_for(tmp_path, docs={"one.md": "The tiny model writes noise. It is fast."},
                        teacher={"model": str(tiny_model_dir), "retries": 0},
                        questions={"per_chunk": 1, "max_tokens": 24},
                        answers={"max_tokens": 24})
    path = tmp_path / "recipe.yaml"
    path.write_text("# python -m localdistil synth recipe.yaml\n" + recipe.to_yaml(),
                    encoding="utf-8")

    assert main(["synth", str(path)]) == 0

    out = Path(recipe.output.dir)
    (done,) = lines(out / "done.jsonl")
    records, rejects = lines(out / "records.jsonl"), lines(out / "rejects.jsonl")
    assert done["records"] == len(records) and done["rejects"] == len(rejects)
    assert records or rejects  # every item ends as one or the other
    assert all(reject["reason"] in REASONS for reject in rejects)
    for reject in rejects:
        if reject["reason"] == "budget":
            assert "max_tokens=24" in reject["detail"]


def test_questions_begin_with_the_openers_in_turn():
    from localdistil.inference.grammar import canonical_regex

    asked = questions_type(3, ("What", "How"))
    good = asked.model_validate_json(
        '{"questions":["What is a run?","How is it kept?","What is auto mode?"]}')
    assert list(good.questions) == ["What is a run?", "How is it kept?", "What is auto mode?"]
    for bad in ('["How is a run?","How is it kept?","What is auto?"]',  # wrong opener
                '["What is a run","How is it kept?","What is auto?"]',  # no question mark
                '["What is a run?","How is it kept?"]'):  # too few
        with pytest.raises(ValidationError):
            asked.model_validate_json(f'{{"questions":{bad}}}')
    regex = re.compile(canonical_regex(asked.model_json_schema()))
    assert regex.fullmatch('{"questions":["What is a run?","How is it kept?","What is it?"]}')
    assert not regex.fullmatch('{"questions":["What is a run?","What is it?","How is it?"]}')
    # without openers: any question, one line, capital first, question mark last
    free = questions_type(2)
    assert free.model_validate_json('{"questions":["Is it fast?","Where are runs kept?"]}')
    with pytest.raises(ValidationError):
        free.model_validate_json('{"questions":["{{id}}","Where are runs kept?"]}')


def test_the_local_teacher_writes_questions_with_the_openers(tiny_model_dir):
    from localdistil.sources.teacher import LocalTeacher

    teacher = LocalTeacher(str(tiny_model_dir), retries=0)
    (outcome,) = teacher.ask([[{"role": "user", "content": "Ask me."}]],
                             questions_type(2, ("Which",)), max_tokens=30)
    assert outcome.text.startswith('{"questions":["Which ')  # the random model, under the grammar


@pytest.fixture(scope="module")
def server_url(tiny_model_dir):
    """``localdistil serve --base tiny=<tiny model>`` on 127.0.0.1 at a free port, in a thread."""
    from localdistil.serve import create_app, load_served

    app = create_app(load_served([], base=f"tiny={tiny_model_dir}"), max_batch=8,
                     batch_wait_ms=5)
    with running(app) as url:
        yield url


def test_a_server_teacher_answers_under_the_schema(server_url):
    from pydantic import BaseModel, ConfigDict

    class Verdict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        answerable: bool

    teacher = RemoteTeacher("tiny", f"{server_url}/v1", timeout=TIMEOUT, retries=0)
    try:
        outcomes = teacher.ask([[{"role": "user", "content": f"Is {i} even?"}] for i in range(3)],
                               Verdict, max_tokens=16)
        (short,) = teacher.ask([[{"role": "user", "content": "Ask me."}]], questions_type(2),
                               max_tokens=3)
    finally:
        teacher.close()

    assert [o.status for o in outcomes] == ["ok"] * 3
    assert all(isinstance(o.value, Verdict) and o.prompt_tokens > 0 for o in outcomes)
    assert short.status == "budget" and short.text.startswith('{"q')  # 3 tokens of it


def test_the_pipeline_with_a_server_teacher(tmp_path, server_url):
    recipe = recipe_for(tmp_path, docs={"one.md": "Servers batch requests. They answer JSON."},
                        teacher={"model": "tiny", "base_url": f"{server_url}/v1",
                                 "timeout": TIMEOUT, "retries": 0},
                        questions={"per_chunk": 1, "max_tokens": 12},
                        answers={"max_tokens": 12})

    report = synthesize(recipe)

    assert report.generated == report.chunks == 1 and report.prompt_tokens > 0
    rejects = lines(Path(recipe.output.dir) / "rejects.jsonl")
    assert report.records + len(rejects) >= 1
    assert sum(report.rejects.values()) == len(rejects)


def test_a_server_teacher_that_cannot_be_reached_or_imported_says_so(monkeypatch):
    from localdistil import LocaldistilError

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    teacher = RemoteTeacher("m", f"http://127.0.0.1:{port}/v1", timeout=5, retries=0)
    teacher.client = teacher.client.with_options(max_retries=0)
    with pytest.raises(LocaldistilError, match="cannot reach the teacher"):
        teacher.ask([[{"role": "user", "content": "hi"}]], TeacherAnswer, max_tokens=8)
    teacher.close()
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(LocaldistilError, match=r"pip install 'localdistil\[remote\]'"):
        RemoteTeacher("m", "http://127.0.0.1:1/v1")


# -- recipes and the command line ---------------------------------------------------------------


def test_the_shipped_synth_recipe_is_valid_and_says_how_to_run_it():
    path = ROOT / "examples/docs_qa/synth.yaml"
    recipe = load_synth_recipe(path)

    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# python -m localdistil synth examples/docs_qa/synth.yaml"
    assert recipe.source_file == path
    from localdistil.training.recipe import load_recipe

    train = load_recipe(ROOT / "recipes/docs_qa.yaml")
    assert train.data.train == [f"{recipe.output.dir}/records.jsonl"]
    assert train.data.function == recipe.function.name


@pytest.mark.parametrize(("data", "overrides", "key", "words"), [
    ({"teacher": {"model": "m", "modle": "x"}}, [], "teacher.modle",
     "Did you mean 'teacher.model'?"),
    ({}, ["chunk.overlap=500"], "chunk.overlap", "must be smaller than chunk.size (384)"),
    ({}, ["teacher.api_key_env=KEY"], "teacher.api_key_env", "without teacher.base_url"),
    ({}, ["teacher.temperature=0.7"], "teacher.temperature", "decodes greedily"),
    ({}, ["answers.user='{chunk}'"], "answers.user", "{question}"),
    ({}, ["questions.user='{chunk} {colour}'"], "questions.user", "{colour}"),
    ({}, ["function.name='not a name'"], "function.name", "should match pattern"),
    ({}, ["chunk.size"], "chunk.size", "is not key=value"),
    ({}, ["questions.openers=[What, 'How?']"], "questions.openers[1]", "should match pattern"),
])
def test_recipe_errors_name_the_key(data, overrides, key, words):
    base = {"source": {"paths": ["README.md"]}, "teacher": {"model": "smollm2-135m"}, **data}

    with pytest.raises(RecipeError) as caught:
        parse_synth_recipe(base, overrides)

    assert caught.value.key == key and words in str(caught.value), str(caught.value)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("source: {paths: [a]}\nteacher: {model: m}\nteacher: {model: n}\n")

    with pytest.raises(RecipeError, match=r"r.yaml:3:1: invalid YAML.*'teacher' appears twice"):
        load_synth_recipe(path)


def test_show_prompts_renders_the_first_chunk_and_loads_no_model(tmp_path, capsys):
    from localdistil.cli import main

    recipe = recipe_for(tmp_path, questions={"user": "Text: {chunk}\nAsk {count}.",
                                             "system": "Be brief."})
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")

    assert main(["synth", str(path), "questions.per_chunk=4", "--show-prompts"]) == 0

    shown = capsys.readouterr().out
    first = recipe_for(tmp_path)
    assert "--- system ---\nBe brief." in shown and "\nAsk 4." in shown
    assert "Text: Alpha ships adapters." in shown and '"minItems": 4' in shown
    assert "<<Alpha ships adapters." in shown  # the answer template, with {question} shown
    assert show_prompts(first).startswith("# ")
    assert not Path(recipe.output.dir).exists() or not any(Path(recipe.output.dir).iterdir())
