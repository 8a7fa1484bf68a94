"""Constrained decoding: JSON schema, regex, Lark / llama.cpp GBNF grammars and fixed choices.

Backend: llguidance (`pip install llguidance`), chosen for millisecond compiles and sub-millisecond
masks on every grammar kind (see the ecosystem notes). The loop sees only the small `RowConstraint`
interface, one object per row:

- `mask(out)`: write the allowed tokens of the next step into a bool row `out [V]`;
- `accept(token)`: advance after the choice (an EOS ends the row; it is never fed to the matcher);
- `rollback(k)`: forget the last k accepted tokens (used by phrase banning's rewind);
- `accepting()`: may the row end here? EOS tokens (all of the runtime's) are allowed only then.

Masks apply FIRST, before the sampler chain (spec/decisions.md). A row whose mask leaves no finite
logit raises `TemperanceError` naming the row and the constraint.

A `Constraint` is the compiled-once description (`json_schema(...)`, `regex(...)`, `grammar(...)`,
`choices(...)`); `constraint.row(runtime)` makes a fresh matcher for one row. Invalid schemas or
grammars raise `TemperanceError` when the constraint is bound to a tokenizer (at the start of
`generate`), never hang.

GBNF caveat (llguidance): rules like `num ::= [0-9]+ ws` become greedy lexemes, so a few lexically
ambiguous llama.cpp grammars accept less than llama.cpp does; `\\uXXXX` escapes in GBNF fail.
JSON schema: llguidance follows the spec (a missing `additionalProperties` allows extra keys),
whitespace is compact unless `json_schema(..., whitespace_flexible=True)`, and `oneOf` needs llguidance's `coerce_one_of`.
No rollback is needed by the loop except for phrase-ban rewinds, which use `rollback(k)`.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from .errors import TemperanceError

__all__ = ["Constraint", "RowConstraint", "json_schema", "regex", "grammar", "lark", "gbnf",
           "choices", "from_args"]

_LT_CACHE: dict[tuple[int, int], Any] = {}


def _llg():
    try:
        import llguidance
        import llguidance.hf  # noqa: F401
        with warnings.catch_warnings():  # its import runs torch.compile, whose own imports warn
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
            import llguidance.torch  # noqa: F401
    except ImportError:
        raise TemperanceError("constrained decoding needs llguidance: pip install llguidance") from None
    return llguidance


def _lltokenizer(runtime: Any) -> Any:
    """The llguidance tokenizer for `runtime` (built once per tokenizer object, ~0.3-2 s)."""
    tok = getattr(runtime, "tokenizer", None)
    hf = getattr(tok, "tok", tok)  # HFTokenizer wraps the transformers tokenizer as .tok
    if hf is None:
        raise TemperanceError("constrained decoding needs a tokenizer (the runtime has none)")
    V = int(getattr(runtime, "vocab_size", 0) or len(hf))
    key = (id(hf), V)
    if key not in _LT_CACHE:
        llg = _llg()
        try:
            _LT_CACHE[key] = (llg.hf.from_tokenizer(hf, n_vocab=V), hf)  # keep hf alive: id() stays unique
        except Exception as e:  # noqa: BLE001
            raise TemperanceError(f"llguidance cannot use this tokenizer: {e}") from None
    return _LT_CACHE[key][0]


class Constraint:
    """A grammar description (kind + text); bind it to a runtime with `row(runtime)`.

    Args:
        kind: "json_schema", "regex", "lark", "gbnf" or "choice".
        text: the schema (JSON text), the regex, the grammar, or a JSON list of choices.
    """

    def __init__(self, kind: str, text: str, *, whitespace_flexible: bool = False):
        if kind not in ("json_schema", "regex", "lark", "gbnf", "choice"):
            raise TemperanceError(f"unknown constraint kind {kind!r}")
        self.kind, self.text = kind, text
        self.whitespace_flexible = whitespace_flexible
        self._grammar: str | None = None
        self._validated: set[int] = set()

    def __repr__(self) -> str:
        short = self.text if len(self.text) < 60 else self.text[:57] + "..."
        return f"{self.kind} constraint {short!r}"

    def compile(self, runtime: Any) -> tuple[Any, str]:
        """Check the grammar against the runtime's tokenizer; return (LLTokenizer, grammar)."""
        llg = _llg()
        lt = _lltokenizer(runtime)
        if self._grammar is None:
            try:
                if self.kind == "json_schema":
                    self._grammar = llg.LLMatcher.grammar_from_json_schema(
                        self.text, defaults={"whitespace_flexible": self.whitespace_flexible})
                else:
                    self._grammar = llg.grammar_from(self.kind, self.text)
            except Exception as e:  # noqa: BLE001
                raise TemperanceError(f"invalid {self.kind}: {e}") from None
        if id(lt) not in self._validated:
            try:
                err = llg.LLMatcher.validate_grammar(self._grammar, lt)
            except Exception as e:  # noqa: BLE001
                err = str(e)
            if err:
                raise TemperanceError(f"invalid {self.kind}: {err.strip().splitlines()[0]}")
            self._validated.add(id(lt))
        return lt, self._grammar

    def row(self, runtime: Any) -> "RowConstraint":
        """A fresh matcher for one row."""
        lt, g = self.compile(runtime)
        return RowConstraint(self, lt, g)


class RowConstraint:
    """One row's llguidance matcher behind the loop's interface (mask / accept / rollback)."""

    def __init__(self, spec: Constraint, lt: Any, grammar: str):
        llg = _llg()
        self.spec = spec
        self.m = llg.LLMatcher(lt, grammar, log_level=0)
        self._bits = llg.torch.allocate_token_bitmask(1, lt.vocab_size)   # int32 [1, ceil(V/32)]
        self._fill = llg.torch.fill_next_token_bitmask
        self._shifts = torch.arange(32, dtype=torch.int32)
        self.V = lt.vocab_size
        self.eos = lt.eos_token
        self._check()

    def _check(self) -> None:
        if self.m.is_error():
            raise TemperanceError(f"{self.spec}: {self.m.get_error().splitlines()[0]}")

    def mask(self, V: int) -> Tensor:
        """Allowed tokens of the next step as a bool tensor [V] (EOS handled by the caller)."""
        self._fill(self.m, self._bits, 0)
        self._check()
        bits = ((self._bits[0, :, None] >> self._shifts) & 1).view(-1).bool()   # [32 * words]
        out = torch.zeros(V, dtype=torch.bool)
        k = min(V, self.V)
        out[:k] = bits[:k]
        return out

    def fork(self) -> "RowConstraint":
        """An independent copy (a beam that branches, a row repeated by `select`)."""
        new = RowConstraint.__new__(RowConstraint)
        new.__dict__.update(self.__dict__)
        new.m, new._bits = self.m.deep_copy(), self._bits.clone()
        return new

    def accepting(self) -> bool:
        return bool(self.m.is_accepting() or self.m.is_stopped())

    def stopped(self) -> bool:
        """No token but EOS can follow."""
        return bool(self.m.is_stopped())

    def accept(self, token: int) -> None:
        if not self.m.consume_token(int(token)):
            raise TemperanceError(f"{self.spec}: token {token} was chosen but the grammar rejects it"
                                  f" ({(self.m.get_error() or '').splitlines()[:1]})")

    def rollback(self, k: int) -> None:
        if k > 0 and not self.m.rollback(int(k)):
            raise TemperanceError(f"{self.spec}: rollback of {k} tokens failed")


def json_schema(schema: dict | str, *, whitespace_flexible: bool = False) -> Constraint:
    """Output must be JSON valid under `schema` (a dict or JSON text).

    Compact JSON by default: with `whitespace_flexible=True` a small model can fill its whole
    budget with newlines between tokens."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise TemperanceError(f"invalid json schema: not JSON ({e})") from None
    if not isinstance(schema, (dict, bool)):
        raise TemperanceError("invalid json schema: must be a JSON object")
    return Constraint("json_schema", json.dumps(schema), whitespace_flexible=whitespace_flexible)


def regex(pattern: str) -> Constraint:
    """Output must match `pattern` in full (Rust regex syntax)."""
    return Constraint("regex", pattern)


def lark(text: str) -> Constraint:
    """A Lark grammar (llguidance's dialect; the start rule is `start`)."""
    return Constraint("lark", text)


def gbnf(text: str) -> Constraint:
    """A llama.cpp GBNF grammar (`root ::= ...`)."""
    return Constraint("gbnf", text)


def grammar(text: str) -> Constraint:
    """A grammar file's text: GBNF when it contains `::=`, else Lark."""
    return gbnf(text) if "::=" in text else lark(text)


def choices(options: Sequence[str]) -> Constraint:
    """Output is exactly one of `options`."""
    opts = [str(o) for o in options]
    if not opts or any(o == "" for o in opts):
        raise TemperanceError(f"choices must be non-empty strings, got {opts!r}")
    return Constraint("choice", json.dumps(opts))


def from_args(*, json_schema_file: str | None = None, regex_text: str | None = None,
              grammar_file: str | None = None, choices_text: str | None = None) -> Constraint | None:
    """Build the constraint named by CLI-style options (at most one); None when none is given."""
    given = [x for x in (json_schema_file, regex_text, grammar_file, choices_text) if x is not None]
    if len(given) > 1:
        raise TemperanceError("give at most one of --json-schema, --regex, --grammar, --choices")
    try:
        if json_schema_file is not None:
            return json_schema(open(json_schema_file, encoding="utf-8").read())
        if grammar_file is not None:
            return grammar(open(grammar_file, encoding="utf-8").read())
    except OSError as e:
        raise TemperanceError(f"cannot read {e.filename}: {e.strerror}") from None
    if regex_text is not None:
        return regex(regex_text)
    if choices_text is not None:
        return choices([c.strip() for c in choices_text.split(",") if c.strip()])
    return None
