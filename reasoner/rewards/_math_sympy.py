"""The algebra side of the math checker; runs inside worker processes (see ``_math_pool``).

``equivalent(pred, gold)`` takes two normalised answers (see ``_math_text.normalize``), parses each *whole*
answer with math-verify's LaTeX normalisation and parser (latex2sympy2_extended) and asks math-verify's
``verify`` whether they are equal. When it says yes, we try to refute it by evaluating both sides to 50
digits, because math-verify has known false positives (huggingface/Math-Verify issues #14 and #21): it
compares with ``evalf(chop=True)`` and with floats rounded to 6 decimals, so ``1/2004!`` equals
``1/2006!`` and ``1e-7`` equals ``2e-7``.

Stricter than math-verify on purpose:
- the whole answer must parse: no falling back to a number found inside a formula that failed to parse
  (issues #41, #82: ``4\\sqrt(2)`` read as ``4``; ``1 - 1/e`` equal to ``1 + 1/e``), nor to the text after
  its last ``=``; a relation without unknowns (``2 = 3``) is a truth value, not an answer;
- a decimal must agree to ~6 significant digits, not just 6 decimal places;
- exact values must agree exactly (to 50 digits), not to 15 digits after chopping small numbers to 0.

math-verify's own timeouts use ``signal.alarm`` (main thread only); here they are off, and the worker bounds
each check itself (``deadline``) with a timer that raises ``CheckTimeout``; the parent process kills a worker
that does not answer in time (e.g. stuck inside a C-level big-integer power).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache

import sympy
from latex2sympy2_extended import NormalizationConfig
from latex2sympy2_extended.latex2sympy2 import latex2sympy, normalize_latex
from math_verify import verify
from math_verify.grader import should_treat_as_complex
from sympy.core.function import AppliedUndef
from sympy.logic.boolalg import Boolean, BooleanAtom

from reasoner.rewards._math_types import CheckTimeout

REL_TOL_INEXACT = sympy.Rational(5, 10**6)  # same policy as _math_text.numbers_equal
REL_TOL_EXACT = sympy.Rational(1, 10**30)
DIGITS = 50

# math-verify's default normalisation of a LaTeX answer (units, \text{}, malformed \frac12 ...)
_NORMALIZATION = NormalizationConfig(
    basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False
)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise ``CheckTimeout`` in this (main) thread after ``seconds``; only for worker processes."""

    def expire(signum, frame):
        raise CheckTimeout(f"math check exceeded {seconds:.2f}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def quiet_math_verify() -> None:
    # With its timeouts off, math-verify warns once per process that we must bound time ourselves: we do.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


_WARM_UP = [
    ("0.5", "\\frac{1}{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("[0,1)", "[0, 1)"),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("x+y=1", "y=1-x"),
    ("\\sin^2 x+\\cos^2 x", "1"),
]


@cache  # once per process
def warm_up() -> None:
    """Exercise each kind of answer once: sympy imports its simplifier, solvers and matrix code lazily, which
    makes a fresh process's first symbolic check take over a second -- more than a check's budget may be."""
    for pred, gold in _WARM_UP:
        equivalent(pred, gold)


@lru_cache(maxsize=4096)  # a gold answer is checked against many samples
def parse_answer(answer: str) -> sympy.Basic | sympy.MatrixBase | None:
    """The sympy object for one whole answer, or None when it does not parse.

    The same normalisation and parser that ``math_verify.parse`` applies to a ``\\boxed{}`` answer, minus
    its fallback of parsing only the text after the last ``=`` when the whole fails: that fragment can
    equal the gold while the answer is junk.
    """
    try:
        latex = normalize_latex(answer, config=_NORMALIZATION)
        parsed = latex2sympy(
            latex,
            is_real=not should_treat_as_complex(latex),
            convert_degrees=False,
            normalization_config=None,
        )
    except Exception:  # the parser rejects malformed LaTeX with many exception types: not an answer
        return None
    if _is_truth_value(parsed):
        return (
            None  # "2 = 3" or "\\infty \\leq 5" is true or false, not an answer; math-verify equates them all
        )
    return parsed


def _is_truth_value(parsed) -> bool:
    """A statement with no unknowns (``Eq(2, 3)``, ``oo <= 5``, ``True``); ``f(2) < f(1)`` is not one."""
    if isinstance(parsed, BooleanAtom):
        return True
    return (
        isinstance(parsed, Boolean)
        and not isinstance(parsed, sympy.Symbol)
        and not parsed.free_symbols
        and not parsed.atoms(AppliedUndef)
    )


def equivalent(pred: str, gold: str) -> bool:
    """Normalised answers ``pred`` and ``gold`` are mathematically equal (math-verify, then refutation)."""
    g, p = parse_answer(gold), parse_answer(pred)
    if g is None or p is None:
        return False
    if not verify(g, p, float_rounding=6, numeric_precision=15, strict=True, timeout_seconds=None):
        return False
    return not refuted(g, p)


# --- refutation ----------------------------------------------------------------------------------------

_PERCENT = sympy.UnevaluatedExpr(sympy.Rational(1, 100))
# Points at which expressions with free symbols are compared: positive and generic, so that square roots
# and logarithms stay real and no polynomial of small degree with small coefficients vanishes by accident.
_POINTS = (sympy.Rational(7, 13), sympy.Rational(29, 17), sympy.Rational(53, 19))


def refuted(gold, pred) -> bool:
    """True when two objects that math-verify called equal provably differ in value.

    Only refutes what it can evaluate: numbers, expressions in the same free symbols (at sample points),
    and tuples, matrices, intervals and finite sets of those. Anything else (relations, undefined functions,
    a set compared with a tuple) is left to math-verify's verdict.
    """
    gold, pred = _unwrap_assignment(gold, pred)
    if isinstance(gold, sympy.MatrixBase) and isinstance(pred, sympy.MatrixBase):
        if gold.shape != pred.shape:
            return False
        return any(refuted(g, p) for g, p in zip(gold, pred, strict=True))
    if isinstance(gold, sympy.Tuple) and isinstance(pred, sympy.Tuple):
        return len(gold) == len(pred) and any(
            refuted(g, p) for g, p in zip(gold.args, pred.args, strict=True)
        )
    if isinstance(gold, sympy.Interval) and isinstance(pred, sympy.Interval):
        return refuted(gold.start, pred.start) or refuted(gold.end, pred.end)
    if isinstance(gold, (sympy.FiniteSet, sympy.Union)) and type(gold) is type(pred):
        gs, ps = _by_value(gold.args), _by_value(pred.args)
        return gs is not None and ps is not None and len(gs) == len(ps) and any(map(refuted, gs, ps))
    if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr):
        return _scalars_differ(gold, pred)
    return False


def _unwrap_assignment(gold, pred):
    # "x = 3" vs "3" (math-verify accepts it); "x = 3" vs "x = 3.0" compares the right-hand sides.
    g_eq = isinstance(gold, sympy.Eq) and isinstance(gold.lhs, sympy.Symbol)
    p_eq = isinstance(pred, sympy.Eq) and isinstance(pred.lhs, sympy.Symbol)
    if g_eq and p_eq and gold.lhs == pred.lhs:
        return gold.rhs, pred.rhs
    if g_eq and not isinstance(pred, sympy.Eq):
        return gold.rhs, pred
    if p_eq and not isinstance(gold, sympy.Eq):
        return gold, pred.rhs
    return gold, pred


def _by_value(items) -> list | None:
    """Set members sorted by numeric value (intervals by their ends); None when one has no value."""
    keyed = []
    for item in items:
        ends = (item.start, item.end) if isinstance(item, sympy.Interval) else (item,)
        values = [_evaluate(e) for e in ends]
        if any(v is None or not v.is_real for v in values):
            return None
        keyed.append((tuple(values), item))
    keyed.sort(key=lambda kv: kv[0])
    return [item for _, item in keyed]


def _scalars_differ(gold: sympy.Expr, pred: sympy.Expr) -> bool:
    gold_values, pred_values = _percent_readings(gold, pred)
    symbols = gold.free_symbols | pred.free_symbols
    if not symbols:
        return all(_values_differ(g, p) for g in gold_values for p in pred_values)
    if gold.free_symbols != pred.free_symbols or len(symbols) > 6:
        return False  # e.g. \text{Evelyn} vs Evelyn: different symbols that math-verify matched by name
    ordered = sorted(symbols, key=lambda s: s.name)
    points = [
        {s: base + sympy.Rational(i + k, 23) for i, s in enumerate(ordered)} for k, base in enumerate(_POINTS)
    ]
    return all(all(_values_differ(g, p, point) for g in gold_values for p in pred_values) for point in points)


def _percent_readings(gold: sympy.Expr, pred: sympy.Expr) -> tuple[list, list]:
    """``28%`` may stand for 28 or 0.28 when the other side is not a percentage too."""
    g_raw, p_raw = _percent_value(gold), _percent_value(pred)
    if g_raw is not None and p_raw is not None:
        return [g_raw], [p_raw]
    if g_raw is not None:
        return [g_raw, g_raw / 100], [pred]
    if p_raw is not None:
        return [gold], [p_raw, p_raw / 100]
    return [gold], [pred]


def _percent_value(expr: sympy.Expr) -> sympy.Expr | None:
    # latex2sympy2_extended writes "x%" as Mul(x, UnevaluatedExpr(1/100)).
    if isinstance(expr, sympy.Mul) and len(expr.args) == 2 and expr.args[1] == _PERCENT:
        return expr.args[0]
    return None


def _values_differ(a: sympy.Expr, b: sympy.Expr, point: dict | None = None) -> bool:
    """``a`` and ``b`` (at ``point``) differ by more than the tolerance; False when either has no value."""
    va, vb, diff = _evaluate(a, point), _evaluate(b, point), _evaluate(a, point, minus=b)
    if va is None or vb is None or diff is None:
        return False  # cannot evaluate: no refutation
    if not all(v.is_finite for v in (va, vb, diff)):
        return False
    scale = max(abs(va), abs(vb))
    inexact = a.has(sympy.Float) or b.has(sympy.Float)
    tol = REL_TOL_INEXACT if inexact else REL_TOL_EXACT
    return bool(abs(diff) > tol * scale)


def _evaluate(expr, point: dict | None = None, minus=None) -> sympy.Expr | None:
    """``expr - minus`` at ``point``, to DIGITS significant digits, as a (possibly complex) number, or None."""
    try:
        if minus is not None:
            expr = expr - minus  # evaluated as one expression: evalf raises precision through cancellation
        if point:
            expr = expr.subs(point)
        value = sympy.N(expr, DIGITS)
    except Exception:  # sympy raises many types on objects it cannot evaluate: then there is no value
        return None
    if not isinstance(value, sympy.Expr) or value.free_symbols or not value.is_number:
        return None
    if value.has(sympy.nan, sympy.zoo):
        return None
    return value
