"""Complexity budgets: a microsecond pre-screen of a predicted answer before sympy sees it.

sympy's cost is unbounded in the size of what an answer *denotes*, not of what it says:
`2^{10^{10}}` is 12 characters and a 1.25 GB integer, `\\int_0^1 x^{10} e^x \\sin x\\,dx` took
98 s here, 80 nested fractions take minutes. The pool's hard timeout bounds each such item, but
every one still burns a core for `timeout_s`, which on a few cores is what the batch waits for.
So an answer beyond any budget below scores 0 with reason `too_complex` without being parsed.
A final answer is a value in closed form; none of MATH-500's, AIME's or AMC's gold answers
comes near a budget (longest 53 characters, nesting depth 2, largest exponent 5, no factorial,
no integral). Only the prediction is screened (references are trusted data). Anything slow that
passes (e.g. `(x+1)^{5000}`, expanded by sympy) is still ended by the pool's timeout.
"""

from __future__ import annotations

import math
import re

MAX_CHARS = 400  # a final answer longer than this is a derivation, not an answer
MAX_DEPTH = 8  # nested groups: { ( [ (gold answers: 2)
MAX_EXPONENT = 10**6  # of any power with a numeric exponent, symbolic base or not
MAX_DIGITS = 10**6  # of a numeric power's or factorial's value (10^6 digits: milliseconds)
# sympy's integration has no useful cost bound, even on tiny inputs (see above).
_INTEGRAL = re.compile(r"\\[io]*int(?![a-zA-Z])")

_OPEN, _CLOSE = "{([", "})]"
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_TERM_SPLIT = re.compile(r"\\cdot|\\times|[+\-*]")


def over_budget(answer: str) -> str | None:
    """Which budget `answer` (normalised LaTeX) exceeds, as a short message; None if within all."""
    if len(answer) > MAX_CHARS:
        return f"{len(answer)} characters > {MAX_CHARS}"
    if _INTEGRAL.search(answer):
        return "an integral"
    depth = deepest = 0
    for ch in answer:
        if ch in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSE:
            depth -= 1
    if deepest > MAX_DEPTH:
        return f"nesting depth {deepest} > {MAX_DEPTH}"
    for i, ch in enumerate(answer):
        if ch == "^":
            exponent = _log10(_operand_after(answer, i + 1))
            if exponent is not None and exponent > math.log10(MAX_EXPONENT):
                return f"exponent ~10^{_fmt(exponent)} > 10^{math.log10(MAX_EXPONENT):.0f}"
            base = _log10(_operand_before(answer, i))
            if exponent is not None and base is not None and base > 0 and _pow10(exponent) * base > MAX_DIGITS:
                return f"power of ~10^{_fmt(math.log10(_pow10(exponent) * base))} digits > 10^{math.log10(MAX_DIGITS):.0f}"
        elif ch == "!" and (i == 0 or answer[i - 1] != "\\"):  # `\!` is a LaTeX space
            n = _log10(_operand_before(answer, i))
            if n is not None and n > 0 and _pow10(n) * n > MAX_DIGITS:  # log10(n!) < n log10(n)
                return f"factorial of ~10^{_fmt(n)}"
    return None


def _pow10(x: float) -> float:
    return math.inf if x > 300 else 10**x


def _fmt(log10: float) -> str:
    return f"{log10:.3g}" if log10 < 1e6 else "(huge)"


def _operand_after(text: str, i: int) -> str:
    """The argument of `^` at text[i:]: a `{...}` group, a `\\command`, or one character."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return ""
    if text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            depth += text[j] == "{"
            depth -= text[j] == "}"
            if depth == 0:
                return text[i + 1 : j]
        return text[i + 1 :]
    if text[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+", text[i:])
        return m.group(0) if m else text[i : i + 2]
    return text[i]


def _operand_before(text: str, i: int) -> str:
    """What `^` or `!` at text[i] applies to: a number, or a `(...)`/`{...}` group."""
    j = i
    while j > 0 and text[j - 1] == " ":
        j -= 1
    if j > 0 and text[j - 1] in ")}":
        depth = 0
        for k in range(j - 1, -1, -1):
            depth += text[k] in ")}"
            depth -= text[k] in "({"
            if depth == 0:
                return text[k + 1 : j - 1]
        return ""
    m = re.search(r"\d+(?:\.\d+)?$", text[:j])
    return m.group(0) if m else ""


def _log10(expr: str) -> float | None:
    """Upper bound of log10|value| of a purely numeric expression (numbers, + - * \\cdot \\times,
    `^`, `!`, brackets); None if it is symbolic or not understood (then no numeric budget applies)."""
    expr = expr.strip()
    while len(expr) >= 2 and expr[0] in "{(" and _closes_at_end(expr):
        expr = expr[1:-1].strip()
    if not expr:
        return None
    if expr[0] in "+-":  # magnitude: 2^{-10^{10}} is as costly as 2^{10^{10}}
        return _log10(expr[1:])
    if _NUMBER.fullmatch(expr):
        return math.log10(max(float(expr), 1.0)) if len(expr) < 300 else float(len(expr))
    terms = _split_top(expr)
    if len(terms) > 1:  # a sum/product of n terms is at most n x (the largest)^n
        logs = [_log10(t) for t in terms]
        if any(v is None for v in logs):
            return None
        return sum(max(v, 0.0) for v in logs) + math.log10(len(terms))
    if expr.endswith("!") and not expr.endswith("\\!"):
        n = _log10(expr[:-1])
        return None if n is None else _pow10(n) * max(n, 1.0)
    caret = _top_level_caret(expr)
    if caret is not None:
        base, exponent = _log10(expr[:caret]), _log10(_operand_after(expr, caret + 1))
        if base is None or exponent is None:
            return None
        return 0.0 if base <= 0 else _pow10(exponent) * base  # 1^(anything) = 1
    return None


def _closes_at_end(expr: str) -> bool:
    depth = 0
    for k, ch in enumerate(expr):
        depth += ch in "{("
        depth -= ch in "})"
        if depth == 0:
            return k == len(expr) - 1
    return False


def _split_top(expr: str) -> list[str]:
    """Split at top-level + - * \\cdot \\times (a leading sign is not a split)."""
    parts, depth, start, k = [], 0, 0, 0
    while k < len(expr):
        ch = expr[k]
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif depth == 0 and k > 0:
            m = _TERM_SPLIT.match(expr, k)
            if m:
                parts.append(expr[start:k])
                start = k = m.end()
                continue
        k += 1
    parts.append(expr[start:])
    return [p for p in parts if p.strip()]


def _top_level_caret(expr: str) -> int | None:
    depth = 0
    for k, ch in enumerate(expr):
        depth += ch in "{("
        depth -= ch in "})"
        if ch == "^" and depth == 0:
            return k
    return None
