"""Documents from files, globs and directories: text-like files in, every skip explained.

- ``.md .markdown .txt .text .rst`` (and any other file named explicitly or by a glob): the
  file's text, decoded as UTF-8 (a byte-order mark dropped) with newlines normalised, exactly
  what ``Path.read_text(encoding="utf-8-sig")`` returns;
- ``.html .htm``: the visible text, markup stripped with the standard library's
  :class:`html.parser.HTMLParser` (``script``, ``style`` and the like left out, block elements
  separated by blank lines, entities decoded);
- ``.jsonl``: one document per line, the text of its ``field`` (``source.jsonl_field``).

Directories are searched recursively for the suffixes in :data:`SUFFIXES` (hidden entries
skipped). A file that is binary (a NUL byte), not UTF-8, empty or unreadable is skipped and
listed in :attr:`Loaded.skipped` with the reason, never fatal; a path or glob that matches
nothing is an error naming ``source.paths``.

Character offsets in a chunk's provenance index :attr:`Document.text`, which :func:`load_file`
gives back for the same path (and line), so a chunk can always be found again in its source.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path

from localdistil.errors import RecipeError

#: What a directory is searched for, by kind.
SUFFIXES: dict[str, str] = {
    ".md": "text", ".markdown": "text", ".txt": "text", ".text": "text", ".rst": "text",
    ".html": "html", ".htm": "html", ".jsonl": "jsonl",
}

#: Bytes read to tell a binary file from a text one.
_SNIFF = 8192


@dataclasses.dataclass(frozen=True)
class Document:
    """The text of one document and where it came from.

    Attributes:
        path: the file, as found (relative to the working directory when under it).
        text: the text the chunks' offsets index.
        line: for a ``.jsonl`` file, the 1-based line the text came from; else ``None``.
    """

    path: str
    text: str
    line: int | None = None

    @property
    def name(self) -> str:
        """``path``, or ``path:line`` for a line of a ``.jsonl`` file."""
        return self.path if self.line is None else f"{self.path}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file (or line) that gave no document, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class Loaded:
    """What :func:`load_documents` found: the documents, in order, and every skip."""

    documents: list[Document]
    skipped: list[Skipped]


def find_files(patterns: Iterable[str], *, key: str = "source.paths") -> list[Path]:
    """The files named by paths, globs (``**`` too) and directories (searched recursively for
    :data:`SUFFIXES`), sorted within each pattern and without repeats.

    Raises:
        RecipeError: naming ``key``, when a path does not exist or a pattern matches nothing.
    """
    found: dict[Path, None] = {}
    for pattern in patterns:
        text = os.path.expanduser(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        elif Path(text).is_dir():
            matches = sorted(_walk(Path(text)))
        elif Path(text).is_file():
            matches = [Path(text)]
        else:
            raise RecipeError(f"{key}: no such file or directory: {pattern!r} (relative paths "
                              f"start at {Path.cwd()})", key=key)
        if not matches:
            what = "no file matches" if glob.has_magic(text) else "no document found in"
            raise RecipeError(f"{key}: {what} {pattern!r} (looked for "
                              f"{' '.join(SUFFIXES)})", key=key)
        found.update(dict.fromkeys(matches))
    return list(found)


def _walk(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                yield Path(root) / name


def load_documents(patterns: Iterable[str], *, jsonl_field: str = "text",
                   progress: bool = False) -> Loaded:
    """Every document in the files that ``patterns`` name (see :func:`find_files`).

    Raises:
        RecipeError: a pattern matches nothing (a file that cannot be read is a skip instead).
    """
    files = find_files(patterns)
    documents: list[Document] = []
    skipped: list[Skipped] = []
    for path in _progress(files, "loading", progress):
        docs, skips = _load(path, jsonl_field)
        documents += docs
        skipped += skips
    return Loaded(documents, skipped)


def load_file(path: str | os.PathLike[str], *, line: int | None = None,
              jsonl_field: str = "text") -> Document:
    """The document at ``path`` (the ``line`` of a ``.jsonl`` file), as :func:`load_documents`
    loads it: what a chunk's provenance refers to.

    Raises:
        ValueError: the file (or line) gives no document; the message says why.
    """
    docs, skips = _load(Path(path), jsonl_field)
    for doc in docs:
        if doc.line == line:
            return doc
    reason = skips[0].reason if skips else f"no line {line}"
    raise ValueError(f"{path}: {reason}")


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, else as given."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _load(path: Path, jsonl_field: str) -> tuple[list[Document], list[Skipped]]:
    name = _display(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [Skipped(name, f"cannot be read ({exc.strerror or exc})")]
    if b"\x00" in data[:_SNIFF]:
        return [], [Skipped(name, "binary (a NUL byte in its first 8 KB)")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [Skipped(name, f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                                  f"{exc.start})")]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    kind = SUFFIXES.get(path.suffix.lower(), "text")
    if kind == "jsonl":
        return _jsonl_documents(name, text, jsonl_field)
    if kind == "html":
        text = html_text(text)
    if not text.strip():
        return [], [Skipped(name, "empty" if not text else "only whitespace")]
    return [Document(name, text)], []


def _jsonl_documents(name: str, text: str, field: str) -> tuple[list[Document], list[Skipped]]:
    documents, skipped = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append(Skipped(where, f"not valid JSON ({exc.msg})"))
            continue
        value = obj.get(field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            got = "no such field" if value is None else f"a {type(value).__name__}"
            skipped.append(Skipped(where, f"no text in field {field!r} ({got}; "
                                          "source.jsonl_field names the field)"))
        elif not value.strip():
            skipped.append(Skipped(where, f"field {field!r} is empty"))
        else:
            documents.append(Document(name, value, line=number))
    if not documents and not skipped:
        skipped.append(Skipped(name, "empty"))
    return documents, skipped


# -- HTML ----------------------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")
_HIDDEN = {"script", "style", "head", "title", "template", "noscript", "svg"}
_BLOCKS = {"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "li",
           "ul", "ol", "dl", "dt", "dd", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
           "blockquote", "br", "hr", "figure", "figcaption", "form", "details", "summary"}


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCKS:
            self.flush()
            self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            self.flush()
            self.pre = max(0, self.pre - (tag == "pre"))

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.current.append(data if self.pre else _SPACES.sub(" ", data))

    def flush(self) -> None:
        text = "".join(self.current)
        self.current = []
        text = text.strip("\n") if self.pre else " ".join(text.split())
        if text.strip():
            self.blocks.append(text)


def html_text(markup: str) -> str:
    """The visible text of an HTML document: one paragraph (blank-line separated) per block
    element, whitespace collapsed outside ``<pre>``, entities decoded."""
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    parser.flush()
    return "\n\n".join(parser.blocks)


def _progress(items: list[Path], label: str, enabled: bool) -> Iterable[Path]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=label, unit="file", leave=False)
