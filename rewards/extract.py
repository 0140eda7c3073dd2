"""Final-answer extraction from model completions (pure text; no sympy, no math-verify).

`extract_answer` looks for the final answer in this order of precedence, taking the *last*
occurrence of each kind:

1. `\\boxed{...}` / `\\fbox{...}` with nested braces (`boxed`)
2. a GSM8K-style `#### N` line (`hash`)
3. "The (final) answer is ..." (`answer_is`)
4. an `Answer: ...` / `Final Answer: ...` / `A: ...` label at the start of a line (`label`)
5. optionally, the last number in the text (`last_number`)

If the completion has a reasoning block (`</think>` by default), only the text after its last
closing tag is searched, so numbers and boxes inside the reasoning are not mistaken for the answer.

Everything here is linear in the input length and bounded per candidate (`MAX_ANSWER_CHARS`), so a
megabyte of braces or a wall of `\\boxed{` costs milliseconds, never quadratic time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An answer longer than this is not an answer: bounded brace scans and label captures.
MAX_ANSWER_CHARS = 1000
# How many `\boxed` occurrences (from the end) we try before giving up on boxes.
MAX_BOXED_CANDIDATES = 16

SOURCES = ("boxed", "hash", "answer_is", "label", "last_number")


@dataclass(frozen=True)
class Extracted:
    """text: the answer as written (delimiters like `$` not yet removed); source: one of SOURCES."""

    text: str
    source: str


# C0 controls except tab/newline/carriage return, DEL, C1 controls, and lone UTF-16 surrogates
# (what `bytes.decode(errors="surrogateescape")` leaves behind for invalid UTF-8).
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def sanitize(text: str) -> str:
    """Drop control characters and lone surrogates; keep everything else verbatim."""
    return _BAD_CHARS.sub("", text)


def after_reasoning(text: str, close_tag: str | None = "</think>") -> str:
    """The text after the last `close_tag`, or all of `text` if the tag is absent or None."""
    if close_tag:
        cut = text.rfind(close_tag)
        if cut >= 0:
            return text[cut + len(close_tag) :]
    return text


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _braced(text: str, open_pos: int) -> str | None:
    """Content of the brace group opening at text[open_pos] == '{', or None if it does not close
    within MAX_ANSWER_CHARS. Escaped braces (`\\{`, `\\}`) are content, not grouping."""
    depth = 0
    i = open_pos
    end = min(len(text), open_pos + MAX_ANSWER_CHARS + 2)
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : i]
        i += 1
    return None


_BARE_BOX_ARG = re.compile(rf"[ \t]+([^\s${{}}\\]{{1,{MAX_ANSWER_CHARS}}})")


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`)."""
    ends = {cmd: len(text) for cmd in _BOX_COMMANDS}
    for _ in range(MAX_BOXED_CANDIDATES):
        # the right-most remaining occurrence of any box command
        best, best_cmd = -1, ""
        for cmd in _BOX_COMMANDS:
            pos = text.rfind(cmd, 0, ends[cmd])
            if pos > best:
                best, best_cmd = pos, cmd
        if best < 0:
            return None
        ends[best_cmd] = best
        arg = best + len(best_cmd)
        while arg < len(text) and text[arg] in " \t\n":
            arg += 1
        if arg < len(text) and text[arg] == "{":
            content = _braced(text, arg)
            if content is not None and content.strip():
                return content.strip()
            continue
        bare = _BARE_BOX_ARG.match(text, best + len(best_cmd))
        if bare:
            return bare.group(1)
    return None


_HASH_LINE = re.compile(r"^[ \t]*####[ \t]*([^\n]*)", re.MULTILINE)
_ANSWER_IS = re.compile(r"(?i:\b(?:the\s+)?(?:final\s+)?answer\s+is)[ \t]*:?[ \t]*([^\n]*)")
_LABEL = re.compile(
    r"^[ \t>#*_]*(?:(?i:final[ \t]+answer|answer)|A)[ \t]*[*_]*[ \t]*[:\uff1a][ \t]*\n?([^\n]*)",
    re.MULTILINE,
)
# Sentence end: a full stop followed by whitespace or the end of the line (not a decimal point).
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# Numbers: thousands separators, decimals, simple fractions, a sign, an optional percent sign.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?:\s*%)?")


def _last_group(pattern: re.Pattern[str], text: str) -> str | None:
    """Group 1 of the last match with non-empty content, clipped to MAX_ANSWER_CHARS."""
    found = None
    for m in pattern.finditer(text):
        if m.group(1).strip():
            found = m
    if found is None:
        return None
    return found.group(1)[:MAX_ANSWER_CHARS].strip()


def hash_answer(text: str) -> str | None:
    """The answer on the last `#### N` line (GSM8K reference format)."""
    return _last_group(_HASH_LINE, text)


def _first_sentence(text: str) -> str:
    m = _SENTENCE_END.search(text)
    return (text[: m.start()] if m else text).strip()


def answer_is(text: str) -> str | None:
    """The rest of the sentence after the last "the answer is" / "final answer is"."""
    found = _last_group(_ANSWER_IS, text)
    return _first_sentence(found) if found else None


def labelled_answer(text: str) -> str | None:
    """The rest of the line after the last `Answer:` / `Final Answer:` / `A:` line label."""
    found = _last_group(_LABEL, text)
    return _first_sentence(found) if found else None


def last_number(text: str) -> str | None:
    """The last number in the text (`1,234.5`, `-3`, `3/4`, `12%`)."""
    found = None
    for m in _NUMBER.finditer(text):
        found = m
    return found.group(0) if found else None


def extract_answer(
    completion: str,
    *,
    fallback_last_number: bool = True,
    reasoning_close: str | None = "</think>",
) -> Extracted | None:
    """Locate the final answer in a completion; None if there is none.

    Args:
        completion: model output, any string (control characters are dropped first).
        fallback_last_number: if no explicit answer marker is found, use the last number.
        reasoning_close: closing tag of the reasoning block; only the text after its last
            occurrence is searched (None: search everything).
    """
    text = after_reasoning(sanitize(completion), reasoning_close)
    finders = [("boxed", last_boxed), ("hash", hash_answer), ("answer_is", answer_is), ("label", labelled_answer)]
    if fallback_last_number:
        finders.append(("last_number", last_number))
    for source, find in finders:
        found = find(text)
        if found:
            return Extracted(found, source)
    return None
