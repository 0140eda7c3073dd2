"""Final-answer extraction from model completions (pure text; no sympy, no math-verify).

`extract_answer` looks for the final answer in this order of precedence, taking the *last*
occurrence of each kind:

1. `\\boxed{...}` / `\\fbox{...}` with nested braces (`boxed`)
2. a GSM8K-style `#### N` line (`hash`)
3. "The (final) answer is ..." (`answer_is`)
4. an `Answer: ...` / `Final Answer: ...` / `A: ...` label at the start of a line, or an
   `Answer:` / `Final Answer:` label anywhere on the last line (`label`)
5. optionally, the last number in the text (`last_number`), if it stands alone

If the completion has a reasoning block (`</think>` by default), only the text after its last
closing tag is searched, so numbers and boxes inside the reasoning are not mistaken for the answer.

An answer is never cut, and never replaced by a number inside it: a box (or label, ...) whose
answer runs past `MAX_ANSWER_CHARS` is returned with `too_long=True` (graders score it
`too_complex`), not skipped. Skipping it used to hand the completion to the last-number
fallback, which graded the last number *inside* the box (`\\boxed{\\frac{1}{\\frac{1}{...7}}}`
counted as 7). For the same reason the fallback is off once the text has a box at all, and it only
takes a number that stands alone, never one that is part of a fraction or expression (the `2` of
`\\frac{84}{2}`, the exponent of `x^2`, the `7` of `x + 7`): then there is no answer.

Everything here is linear in the input length and bounded per candidate (`MAX_ANSWER_CHARS`), so a
megabyte of braces or a wall of `\\boxed{` costs milliseconds, never quadratic time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An answer longer than this is not an answer (too_long): bounded brace scans.
MAX_ANSWER_CHARS = 1000
# How many `\boxed` occurrences (from the end) we try before giving up on boxes.
MAX_BOXED_CANDIDATES = 16

SOURCES = ("boxed", "hash", "answer_is", "label", "last_number")


@dataclass(frozen=True)
class Extracted:
    """text: the answer as written (delimiters like `$` not yet removed); source: one of SOURCES.

    too_long: the answer runs past MAX_ANSWER_CHARS (a box that does not close within it, a
    label line longer than it). `text` is then only its first MAX_ANSWER_CHARS characters, for
    the record: it must not be graded (a cut answer is another answer), and nothing else in the
    completion stands in for it."""

    text: str
    source: str
    too_long: bool = False


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


def _braced(text: str, open_pos: int) -> tuple[str | None, bool]:
    """(content, too_long) of the brace group opening at text[open_pos] == '{'.

    (content, False) if it closes within MAX_ANSWER_CHARS; (None, False) if the text ends first
    (a completion cut off inside the group); (its first MAX_ANSWER_CHARS characters, True) if it
    is still open after MAX_ANSWER_CHARS. Escaped braces (`\\{`, `\\}`) are content, not grouping."""
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
                return text[open_pos + 1 : i], False
        i += 1
    if min(i, len(text)) > open_pos + MAX_ANSWER_CHARS + 1:  # more than MAX_ANSWER_CHARS, still open
        return text[open_pos + 1 : open_pos + 1 + MAX_ANSWER_CHARS], True
    return None, False


# one character more than allowed, so that an over-long bare argument is seen, not cut
_BARE_BOX_ARG = re.compile(rf"[ \t]+([^\s${{}}\\]{{1,{MAX_ANSWER_CHARS + 1}}})")


def boxed_answer(text: str) -> Extracted | None:
    """The last box's answer: `\\boxed{...}` (nested braces), `\\fbox{...}` or `\\boxed 5`.

    Only the last box counts. An empty box, or one the text ends inside (a cut-off completion),
    is no answer, and the box before it is tried. A box still open after MAX_ANSWER_CHARS is the
    answer, `too_long`: the model's final answer is that box, whatever is before it."""
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
            content, too_long = _braced(text, arg)
            if too_long:
                return Extracted(content or "", "boxed", too_long=True)
            if content is not None and content.strip():
                return Extracted(content.strip(), "boxed")
            continue
        bare = _BARE_BOX_ARG.match(text, best + len(best_cmd))
        if bare:
            found = bare.group(1)
            if len(found) > MAX_ANSWER_CHARS:
                return Extracted(found[:MAX_ANSWER_CHARS], "boxed", too_long=True)
            return Extracted(found, "boxed")
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed box (see `boxed_answer`); None if there is none or it is
    longer than MAX_ANSWER_CHARS."""
    found = boxed_answer(text)
    return found.text if found is not None and not found.too_long else None


def has_box(text: str) -> bool:
    """True if the text has a box command at all (usable or not)."""
    return any(cmd in text for cmd in _BOX_COMMANDS)


_HASH_LINE = re.compile(r"^[ \t]*####[ \t]*([^\n]*)", re.MULTILINE)
_ANSWER_IS = re.compile(r"(?i:\b(?:the\s+)?(?:final\s+)?answer\s+is)[ \t]*:?[ \t]*([^\n]*)")
_LABEL = re.compile(
    r"^[ \t>#*_]*(?:(?i:final[ \t]+answer|answer)|A)[ \t]*[*_]*[ \t]*[:\uff1a][ \t]*\n?([^\n]*)",
    re.MULTILINE,
)
# A label inside a line ("So, **Final Answer:** $42$"): only the words, not "A:" ("point A: (1, 2)").
# No capture, so a line of a million labels costs one short match each, not a copy of the line each.
_INLINE_LABEL = re.compile(r"\b(?i:final[ \t]+answer|answer)[ \t]*[*_]*[ \t]*[:\uff1a][*_]*[ \t]*")
# Sentence end: a full stop followed by whitespace or the end of the line (not a decimal point).
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# Numbers: thousands separators (also LaTeX's `1{,}000`, `10\,000`), decimals (also `.5`),
# simple fractions, a sign, an optional percent sign. Not glued to a word or a decimal point.
_NUMBER = re.compile(
    r"(?<![\w.])-?(?:(?:\d{1,3}(?:(?:,|\{,\}|\\[,;: !]|~)\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/\d+)?(?:\s*\\?%)?"
)
# Digits that are not a `_NUMBER` of their own but part of math: `\frac12`, `\sqrt2`, `x_1`, `1.2.3`.
_MATH_DIGITS = re.compile(r"\\[A-Za-z]+\d|[_.]\d")


def _last_group(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match whose group 1 is not blank."""
    found = None
    for m in pattern.finditer(text):
        if m.group(1).strip():
            found = m
    return found


def hash_answer(text: str) -> str | None:
    """The answer on the last `#### N` line (GSM8K reference format)."""
    found = _last_group(_HASH_LINE, text)
    return found.group(1).strip() if found else None


def _first_sentence(text: str) -> str:
    m = _SENTENCE_END.search(text)
    return (text[: m.start()] if m else text).strip()


def answer_is(text: str) -> str | None:
    """The rest of the sentence after the last "the answer is" / "final answer is"."""
    found = _last_group(_ANSWER_IS, text)
    return _first_sentence(found.group(1)) if found else None


def labelled_answer(text: str) -> str | None:
    """The rest of the sentence after the last answer label: `Answer:` / `Final Answer:` / `A:`
    at the start of a line, or `Answer:` / `Final Answer:` anywhere on the last line (`... so,
    Final Answer: $\\frac{84}{2}$`), whichever comes later."""
    found = _last_group(_LABEL, text)
    start, answer = (found.start(), found.group(1)) if found else (-1, "")
    body = text.rstrip()
    line_start = body.rfind("\n") + 1
    inline = None
    for m in _INLINE_LABEL.finditer(body, line_start):
        inline = m
    if inline is not None and inline.start() > start and body[inline.end() :].strip():
        answer = body[inline.end() :]
    answer = _first_sentence(answer)
    return answer or None


# What binds a number into an expression when written right before or after it.
_OPERATORS = frozenset("+-*/^_×÷·−±∓√∛<>≤≥≠")
# LaTeX commands next to a number that leave it a value of its own: `x \approx 7`, `\quad 7`,
# `\Rightarrow 7`, `\textbf{7}`, `7^\circ`. Any other command (`\frac12`, `\sqrt2`, `\cdot 7`,
# `\le 7`, `3\pi`, `\frac{84}{2}`) makes the number part of an expression.
_VALUE_COMMANDS = frozenset(
    "approx equiv simeq cong sim quad qquad to rightarrow Rightarrow longrightarrow Longrightarrow "
    "implies therefore left right big Big bigl bigr Bigl Bigr displaystyle textstyle text textbf "
    "textit textrm textup mathrm mathbf mathit mathsf mbox rm bf it emph underline boxed fbox bm "
    "boldsymbol end tag label".split()
)
_COMMAND_BEFORE = re.compile(r"\\([A-Za-z]+)$")
_COMMAND_AFTER = re.compile(r"\\([A-Za-z]+)")
_SCRIPT_BEFORE = re.compile(r"[_^](?:\w|\{[^{}]*\})$")  # `\log_2 8`, `\log_{10} 100`
_DEGREES = re.compile(r"\^\s*(?:\\circ|\{\s*\\circ\s*\})")
_CONTEXT = 64  # characters looked at on each side of a number


def _ends_value(before: str) -> bool:
    """Can a number right after `before` (stripped on the right) be a value of its own?"""
    if not before or before.endswith(("=>", "->")):  # ASCII arrows: `3 + 4 => 7`
        return True
    last = before[-1]
    if last in _OPERATORS:
        return False
    cmd = _COMMAND_BEFORE.search(before)
    if cmd:  # `\sqrt2`, `\cdot 7`, `\le 7` vs `\approx 7`, `\quad 7`
        return cmd.group(1) in _VALUE_COMMANDS
    if _SCRIPT_BEFORE.search(before):  # `\log_2 8`
        return False
    if last in "{[":  # the number opens a group: an argument of what?
        outer = before[:-1].rstrip()
        cmd = _COMMAND_BEFORE.search(outer)
        if cmd:  # `\sqrt{2}`, `\frac{1}{...}`, `\sqrt[3]{...}` vs `\textbf{7}`
            return cmd.group(1) in _VALUE_COMMANDS
        # `}{2}` (a second argument), `^{10}`, `x_{1}`, `f{2}` vs a plain group `${42}$`
        return not outer or (outer[-1] not in "}]^_" and not outer[-1].isalnum())
    return True


def _unemphasise(before: str, after: str) -> tuple[str, str]:
    """Drop markdown emphasis around a number (`**17**`, `*17*`), which is not multiplication."""
    while before.endswith(("**", "__")):
        before = before[:-2].rstrip()
    while after.startswith(("**", "__")):
        after = after[2:].lstrip()
    if before.endswith("*") and after.startswith("*"):
        before, after = before[:-1].rstrip(), after[1:].lstrip()
    return before, after


def _standalone(text: str, start: int, end: int) -> bool:
    """Is text[start:end] (a `_NUMBER` match) a whole value, not part of a fraction or an
    expression: not a numerator or denominator (`\\frac{84}{2}`, `x/2`), an exponent or
    subscript, an argument (`\\sqrt{2}`, `\\log_2 8`), or an operand (`x + 7`, `3\\pi`)?"""
    before = text[max(0, start - _CONTEXT) : start].rstrip()
    after = text[end : end + _CONTEXT].lstrip()
    if text[start] == "-" and before and (before[-1].isdigit() or before[-1] in ")]}"):
        return False  # `10 -7`: a binary minus
    before, after = _unemphasise(before, after)
    if not _ends_value(before):
        return False
    while after.startswith("}"):  # the end of the number's group: what follows the group?
        after = after[1:].lstrip()
        if after[:1] in ("{", "["):
            return False  # the first of two arguments: `\frac{84}{2}`, `\binom{5}{2}`
    if not after or _DEGREES.match(after):  # `90^\circ` is a value
        return True
    if after[0] in _OPERATORS:
        # a hyphen glued to a word ("a 7-day week") is prose, not a minus
        return after[0] == "-" and after[1:2].isalpha() and text[end : end + 1] == "-"
    cmd = _COMMAND_AFTER.match(after)  # `3\pi`, `2\sqrt{2}`, `7 \cdot x` vs `7 \text{ cm}`
    return cmd is None or cmd.group(1) in _VALUE_COMMANDS


def last_number(text: str) -> str | None:
    """The last number in the text (`1,234.5`, `-3`, `3/4`, `12%`), if it stands alone (see
    `_standalone`). If it does not (`\\frac{84}{2}`, `x^2`, `x + 7`), or digits after it are
    part of math (`\\frac12`, `x_1`, `1.2.3`), there is no answer: an earlier number is not the
    answer either. Digits inside words (`H2O`, a signature `-sepehr2010`) are not numbers."""
    found = None
    for m in _NUMBER.finditer(text):
        found = m
    if found is None or _MATH_DIGITS.search(text, found.end()):
        return None
    if not _standalone(text, found.start(), found.end()):
        return None
    return found.group(0)


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
    boxed = boxed_answer(text)
    if boxed is not None:
        return boxed
    finders = [("hash", hash_answer), ("answer_is", answer_is), ("label", labelled_answer)]
    if fallback_last_number and not has_box(text):  # a box that gives no answer: no guessing
        finders.append(("last_number", last_number))
    for source, find in finders:
        found = find(text)
        if found:
            if len(found) > MAX_ANSWER_CHARS:
                return Extracted(found[:MAX_ANSWER_CHARS], source, too_long=True)
            return Extracted(found, source)
    return None
