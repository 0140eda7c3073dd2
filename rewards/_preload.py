"""Imported once by the forkserver (and by each "spawn" worker): import math-verify and exercise
the common answer types once, so regexes are compiled and sympy's lazily imported code paths
are loaded before workers are forked. A cold worker otherwise spends 0.1-0.3 s on its first
interval / set / equation / matrix, enough to be mistaken for a straggler on a busy machine."""

# rewards.worker comes with the package (rewards.pool imports it); importing it here by name
# would close a cycle (worker_main imports this module)
from rewards import accuracy

_WARM_UP = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{3.0}", "3"),
    ("#### 1,234", "1234"),
    ("\\boxed{x = 3}", "3"),
    ("\\boxed{y = 2x + 3}", "y=3+2x"),
    ("\\boxed{(1, 2]}", "(1,2]"),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)"),
    ("\\boxed{\\{1, 2\\}}", "\\{2,1\\}"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("\\boxed{3 + 4i}", "3+4i"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{50\\%}", "50"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
    ("\\boxed{e^{0} + \\log_2 8 + \\binom{5}{2} + 10!}", "3628814"),
]
try:  # an error here must not take the forkserver down: workers would just start colder
    _reward = accuracy.MathReward()
    for _completion, _reference in _WARM_UP:
        _reward.score(_completion, _reference)
    accuracy._parse_cached.cache_clear()  # keep the warm-up's references out of the workers' cache
except Exception:  # pragma: no cover
    pass
