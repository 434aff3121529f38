"""The text side of the math checker: find the final answer, normalise it, and settle what needs no algebra.

Everything here is plain Python (no sympy) and linear in the input, so it runs in the calling process: it
decides plain numbers (the GSM8K hot path), multiple-choice letters, words and identical strings, and it
rejects shapes that computer algebra would misread (``2 2/3`` parsed as ``2*2/3``, ``1 2`` as ``1+2``). What
is left goes to a worker process (see ``_math_sympy``).

>>> extract_answer("so 3 + 4 = 7.\\n#### 7")
'7'
>>> quick_verdict(normalize("1,234.0"), normalize("1234"))
True
>>> quick_verdict(normalize("12"), normalize("1.2"))
False
>>> quick_verdict(normalize("\\\\frac{\\\\sqrt{2}}{2}"), normalize("0.7071")) is None  # needs sympy
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_SCAN_CHARS = 100_000  # the final answer sits at the end; look at most this far back into a completion
MAX_ANSWER_CHARS = 2_000  # longer "answers" are not answers (and could be slow to parse): they score 0
_MAX_DIGITS = 400  # longer digit strings are not read as numbers here (Fraction/str->int cost grows)

# --- extraction ---------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K = re.compile(r"####[ \t]*")
_ANSWER_IS = re.compile(r"(?i)answer\s*(?:is\s*:?|:)[ \t]*(?:\*\*)?[ \t]*")  # after a word boundary
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?![\w])"
    r"|(?<![\w.])[-+]?\.\d+(?![\w])"
)
_MATH_DELIMS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
# A completion taking back what it said: after its final answer, that answer no longer stands.
_REVISION = re.compile(
    r"(?i)\b(?:actually|wait|oops|hold\s+on|hang\s+on|correction|scratch\s+that|on\s+second\s+thoughts?"
    r"|i\s+made\s+an?\s+(?:mistake|error)|i\s+mean|sorry|let\s+me\s+re(?:check|compute|calculate|consider|do|think)"
    r"|(?:that|this|it)(?:'s|\u2019s|\s+is|\s+was)\s+(?:wrong|incorrect|not\s+right|a\s+mistake))\b"
    r"|(?:^|[.!?;:\n])[ \t*]*no\s*[,.!;:\u2014]"
)
# ... and stating the new one: "Actually no, it is 20."
_RESTATED = re.compile(
    r"(?i)\b(?:it|that|this|the\s+(?:correct\s+|right\s+|real\s+)?answer)(?:'s|\u2019s|\s+is|\s+should\s+be"
    r"|\s+must\s+be|\s+would\s+be)\s*:?[ \t]*(?:\*\*)?[ \t]*"
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_CUT = object()  # a final answer cut off inside its delimiter: no answer at all, no fallback


def extract_answer(text: str) -> str | None:
    """The final answer of a completion or reference solution, or None when there is none.

    The final answer is the last one the completion commits to: the last well-formed ``\\boxed{...}`` /
    ``\\fbox{...}`` (nested braces), GSM8K ``#### 42`` line or "the answer is ..." / "answer: ...", whichever
    comes last, else the last number in the text. An answer taken back afterwards ("Actually, no", "Wait",
    "that's wrong") no longer stands: the answer is then what the revision states ("it is 20"), or none.
    A final answer cut off inside its delimiter (an unclosed ``\\boxed{``, a ``####`` or "the answer is" at
    the very end, a number inside an unclosed formula) is no answer: an earlier number does not stand in.
    Only the last ``MAX_SCAN_CHARS`` characters are read.

    >>> extract_answer(r"We get $\\boxed{\\frac{1}{2}}$ and finally \\boxed{\\{1, \\frac{3}{4}\\}}.")
    '\\\\{1, \\\\frac{3}{4}\\\\}'
    >>> extract_answer("She pays 3 * 2 = <<3*2=6>>6 dollars.\\n#### 1,234")
    '1,234'
    >>> extract_answer("So the answer is $18.")
    '18'
    >>> extract_answer("First 12 apples, then 30 more: 42 in all.")
    '42'
    >>> extract_answer("The answer is 18. Actually no, it is 20."), extract_answer("So it is $\\\\boxed{5")
    ('20', None)
    >>> extract_answer("no digits here") is None
    True
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    text = text[-MAX_SCAN_CHARS:]
    found = _last_commitment(text)
    if found is _CUT:
        return None
    if found is None:
        found = _last_number(text)
        if found is None:
            return None
    answer, end = found  # type: ignore[misc]  # (answer, end) here
    revision = _last_match(_REVISION, text, end) if end < len(text) else None
    if revision is not None:  # taken back: only a restatement after the revision stands
        restated = _last_match(_RESTATED, text, revision.end())
        if restated is None:
            return None
        answer = _statement(text, restated.end())[0]
    cleaned = _clean(answer)
    return cleaned or None


def _last_commitment(text: str):
    """``(answer, end)`` of the last committed final answer, ``_CUT`` when it is cut off, or None."""
    best = _last_boxed(text)  # (answer, end, start)
    if best is _CUT:
        return _CUT
    # Only a marker after the best so far can be the last one, so look only there (this runs on every
    # completion); one inside the box is part of it: "\boxed{\text{the answer is } 5}".
    lo = 0 if best is None else best[1]
    for find in (_last_gsm8k, _last_answer_is):
        marker = find(text, lo)
        if marker is _CUT:  # "... #### " or "the answer is" at the very end
            return _CUT
        if marker is not None:
            best, lo = marker, marker[2] + 1
    return None if best is None else best[:2]


def _last_match(pattern: re.Pattern, text: str, start: int) -> re.Match | None:
    last = None
    for last in pattern.finditer(text, start):  # noqa: B007  # the last one is what we want
        pass
    return last


def _last_boxed(text: str):
    """``(content, end, start)`` of the last non-empty box, or ``_CUT`` when one of the last boxes never closes."""
    if "box" not in text:  # (the common case; a regex scan costs more)
        return None
    starts = list(_BOX.finditer(text))[-4:]
    for m in reversed(starts):
        span = _braced_span(text, m.end())
        if span is None:  # the text ends inside this box: a truncated answer
            return _CUT
        content, end = span
        if content.strip():
            return content, end, m.start()
    return None


def _braced(text: str, start: int) -> str | None:
    span = _braced_span(text, start)
    return None if span is None else span[0]


def _braced_span(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at ``text[start]`` (after spaces), or one bare token, and the
    index just past it.

    None when the group never closes (a truncated completion). A group longer than the longest answer is
    returned cut at that length, so that it scores 0 rather than letting an earlier number stand in.
    """
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # "\boxed 5" (TeX allows an unbraced single token)
        token = re.match(r"[^\s${}]+", text[i:])
        return (token.group(0), i + token.end()) if token and i > start else ("", i)
    depth, j, end = 0, i, min(len(text), i + 4 * MAX_ANSWER_CHARS)
    while j < end:
        c = text[j]
        if c == "\\":  # an escaped \{ or \} is content, not a group
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return (text[i + 1 : end], end) if end < len(text) else None


def _last_gsm8k(text: str, lo: int):
    at = text.rfind("####", lo)  # str.rfind, not a regex scan from the start
    return None if at < 0 else _committed(text, _GSM8K.match(text, at))


def _last_answer_is(text: str, lo: int):
    # The last "answer is" / "answer:" at or after lo, found from the end: each spelling's last place, and
    # after a miss the one before it (so "answer answer ..." costs one pass, not one per word).
    if text.find("nswer", lo) < 0 and text.find("NSWER", lo) < 0:  # the common case, on every completion
        return None
    last = {word: text.rfind(word, lo) for word in ("answer", "Answer", "ANSWER")}
    while True:
        word, at = max(last.items(), key=lambda item: item[1])
        if at < 0:
            return None
        if at == 0 or not (text[at - 1].isalnum() or text[at - 1] == "_"):
            marker = _ANSWER_IS.match(text, at)
            if marker is not None:
                return _committed(text, marker)
        last[word] = text.rfind(word, lo, at + len(word) - 1)


def _committed(text: str, marker: re.Match):
    """``(answer, end, start)`` of what follows a ``####`` / "the answer is" marker; ``_CUT`` if nothing does."""
    if _NOTHING_MORE.fullmatch(text, marker.end()):  # the text stops right after the marker: cut off
        return _CUT
    answer, end = _statement(text, marker.end())
    if not answer.strip():
        return None
    return answer, end, marker.start()


_NOTHING_MORE = re.compile(r"[\s*$:]*")
_STOP = re.compile(r"\.(?:\s|$)|\n")  # "3.5" keeps its point; "5. Then" ends at 5


def _statement(text: str, start: int) -> tuple[str, int]:
    """The answer stated at ``text[start:]`` and where it ends: a math span, else up to the sentence's end."""
    if text.startswith(("$", "\\[", "\\("), start):  # "the answer is $x^2$." -> the math span
        for left, right in _MATH_DELIMS:
            if text.startswith(left, start):
                close = text.find(right, start + len(left))
                if close > start:
                    return text[start + len(left) : close], close + len(right)
    stop = _STOP.search(text, start)
    end = len(text) if stop is None else stop.start()
    return text[start:end], end


def _last_number(text: str) -> tuple[str, int] | None:
    """The last number and where its sentence starts (a revision there takes it back, see extract_answer);
    None when it is asked about (its sentence ends in "?") or sits in a formula that was cut off."""
    last = _last_match(_NUMBER, text, 0)
    if last is None:
        return None
    end = _SENTENCE_END.search(text, last.end())
    if end is not None and end.group(0) == "?":
        return None
    if _inside_unclosed_formula(text, last.start()):
        return None
    sentence_start = max(text.rfind(c, 0, last.start()) for c in ".!?\n") + 1
    return last.group(0).lstrip("+"), sentence_start


def _inside_unclosed_formula(text: str, at: int) -> bool:
    """Whether the number at ``text[at]`` is part of a formula the text stops in the middle of: inside or
    before a LaTeX argument that never closes (``\\frac{3}{4``, ``\\frac{5}{``), or in an unclosed ``\\(`` / ``\\[``."""
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        opened = text.rfind(left, 0, at)
        if opened >= 0 and text.find(right, opened) < 0:
            return True
    lo, hi = max(0, at - MAX_ANSWER_CHARS), at + 4 * MAX_ANSWER_CHARS
    if hi < len(text):  # the text goes on long after its last number: not a formula cut around it
        return False
    unclosed: list[int] = []
    i = lo
    while i < len(text):
        c = text[i]
        if c == "\\":  # \{ and \} are set braces, and a command name holds no braces
            i += 2
            continue
        if c == "{":
            unclosed.append(i)
        elif c == "}" and unclosed:
            unclosed.pop()
        i += 1
    # an argument (after a command, "}", "^" or "_"), not a stray brace: "{{{5" is just text
    return any(_ARGUMENT_BEFORE.search(text, max(0, j - 40), j) for j in unclosed)


_ARGUMENT_BEFORE = re.compile(r"(?:\\[A-Za-z]+|[}^_])\s*$")


def _clean(answer: str) -> str:
    """Strip what surrounds an answer: spaces, markdown bold, math delimiters, a trailing period."""
    s = answer.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*").strip().rstrip(".").rstrip()
        for left, right in _MATH_DELIMS:
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left) : len(s) - len(right)].strip()
        if s.startswith("$") and not s.endswith("$"):  # "$18" (dollars), not "$x$"
            s = s[1:]
        if s == before:
            break
    return s


# --- normalisation --------------------------------------------------------------------------------------

MALFORMED = "\x00malformed"  # normalize()'s marker for answers that must not be parsed (they score 0)

_SPACING = re.compile(
    r"(?<!\\)\\[,;:! ]|\\quad|\\qquad|\\displaystyle|\\left(?![A-Za-z])|\\right(?![A-Za-z])|~"
)
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree(?![A-Za-z])|\\circ(?![A-Za-z])")
_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit|operatorname)\s*\{([^{}]*)\}"
)
_SPACES_NEAR_SYMBOLS = re.compile(r"\s+(?=[^\w\s])|(?<=[^\w\s])\s+")


def normalize(answer: str | None) -> str:
    """A canonical string for an extracted answer ("" when empty, ``MALFORMED`` when ambiguous).

    Purely textual and conservative: spacing commands, ``\\left``/``\\right``, degree marks, ``$``, a
    trailing period and an outer ``\\boxed{}`` go; ``\\dfrac``/``\\tfrac`` become ``\\frac``; ``14{,}916``
    becomes ``14,916``. Digit groups separated by spaces that are not thousands (``1 2``, ``4 10/3``) are
    ``MALFORMED``: algebra systems read them as sums or products, which has made wrong answers score 1.

    >>> normalize(r" $\\dfrac{1}{2}$. ")
    '\\\\frac{1}{2}'
    >>> normalize(r"90^\\circ"), normalize(r"14{,}916"), normalize(r"\\boxed{\\left( 1, 2 \\right)}")
    ('90', '14,916', '(1, 2)')
    >>> normalize("1 2") == MALFORMED
    True
    """
    if answer is None:
        return ""
    if len(answer) > MAX_ANSWER_CHARS:
        return MALFORMED
    if _SIMPLE_NUMBER.fullmatch(answer):  # the hot path: nothing to normalise
        return answer
    s = _clean(answer)
    if len(s) > MAX_ANSWER_CHARS:
        return MALFORMED
    for _ in range(3):  # an answer that is itself boxed (a gold written as "\boxed{5}")
        m = _BOX.match(s)
        if not m:
            break
        inner = _braced(s, m.end())
        if inner is None or s[m.end() :].strip() != "{" + inner + "}":
            break
        s = _clean(inner)
    s = s.replace("\u2212", "-").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\%", "%").replace("\\$", "").replace("{,}", ",")
    s = _DEGREES.sub("", s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = re.sub(r" ?([()\[\]]) ?", r"\1", s)
    if s.startswith("$") and not s.endswith("$"):
        s = s[1:].strip()
    s = _THOUSANDS_SPACE.sub(lambda m: m.group(0).replace(" ", ""), s)
    if not _balanced_braces(s):  # math-verify would parse "a}+1" as just "a": a fragment
        return MALFORMED
    if _MIXED.search(s):  # only a whole answer can be read as a mixed number ("2 2/3 cups" is fine)
        bare = _strip_units(s)
        if _mixed_number(bare) is None and _mixed_latex(bare) is None:
            return MALFORMED
    if _DIGIT_SPACE_DIGIT.search(_MIXED.sub("", s)):
        return MALFORMED
    return s


def _balanced_braces(s: str) -> bool:
    depth, i = 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\":  # \{ and \} are set braces, not groups
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


_SIMPLE_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_THOUSANDS_SPACE = re.compile(r"(?<![\d.])\d{1,3}(?: \d{3})+(?![\d/])")
# "1 2" but not "\log_2 8", "x^2 3" or TeX's "\frac 1 2"
_DIGIT_SPACE_DIGIT = re.compile(r"(?<![\w^_.\\])(?<!\\frac )(?<!\\sqrt )\d+ \d")
_MIXED = re.compile(r"(?<![\w.^_])-?\d+(?: \d+/\d+| ?\\frac\{\d+\}\{\d+\}|\\frac\d\d)(?![\w])")


# --- plain numbers: the fast path -----------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: Fraction
    inexact: bool = False  # written with a decimal point: may be a rounded value
    percent: bool = False


_DECIMAL = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d{1,3})?|[-+]?\.\d+(?:[eE][-+]?\d{1,3})?"
_PLAIN = re.compile(rf"({_DECIMAL})(?:/(\d+))?")
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?)\\frac(\d)(\d)")
_PERCENT = re.compile(r"\s*(?:%|percent|pct)$", re.IGNORECASE)
_TRAILING_TEXT = re.compile(r"^(.*?\d)\s*\\text\{([^{}]*)\}$|^(.*?\d)((?:\s+[A-Za-z][A-Za-z/^23.]*)+)$")
_NOT_UNITS = frozenset(
    "pi e i and or plus minus times over divided by to out of from than more less fewer point base mod "
    "remainder r k m x y z n thousand thousands million millions billion billions trillion trillions "
    "hundred hundreds dozen dozens half halves third thirds quarter quarters fourth fourths fifth fifths "
    "sixth sixths seventh sevenths eighth eighths ninth ninths tenth tenths twelfth twelfths twentieth "
    "twentieths hundredth hundredths thousandth thousandths millionth millionths percent percentage pct "
    "squared cubed sqrt root roots factorial power inf infinity infinite not no none negative positive "
    "sq sqm".split()
)


def parse_number(s: str) -> Num | None:
    """A plain number: ``-1,234.5``, ``3/4``, ``\\frac{3}{4}``, ``2 2/3``, ``28%``, ``18 dollars``; else None.

    >>> parse_number("1,234.50"), parse_number("-\\\\frac{3}{4}").value, parse_number("2 1/2").value
    (Num(value=Fraction(2469, 2), inexact=True, percent=False), Fraction(-3, 4), Fraction(5, 2))
    >>> parse_number("2 pi") is None, parse_number("x") is None
    (True, True)
    """
    if not s or len(s) > _MAX_DIGITS or not any(c.isdigit() for c in s):
        return None
    s = s.strip()
    percent = False
    m = _PERCENT.search(s)
    if m:
        s, percent = s[: m.start()].strip(), True
    else:
        s = _strip_units(s)
    if s.startswith("+"):
        s = s[1:]
    value = _mixed_number(s) or _mixed_latex(s)
    inexact = False
    if value is None:
        m = _FRAC.fullmatch(s)
        if m:
            sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.group(2) else m.group(4, 5, 6)
            if int(den) == 0:
                return None
            value = Fraction(int(num), int(den)) * (-1 if sign else 1)
        else:
            m = _PLAIN.fullmatch(s)
            if not m:
                return None
            number, den = m.group(1), m.group(2)
            inexact = "." in number or "e" in number.lower()
            value = Fraction(number.replace(",", ""))
            if den is not None:
                if int(den) == 0 or inexact:
                    return None
                value /= int(den)
    return Num(value, inexact, percent)


def _strip_units(s: str) -> str:
    """``18 dollars`` -> ``18``, ``5\\text{ cm}`` -> ``5``; value-changing words (``2 pi``, ``5 thousand``) stay."""
    m = _TRAILING_TEXT.match(s)
    if not m:
        return s
    head, words = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    tokens = re.findall(r"[A-Za-z]+", words)
    if words.strip() and re.fullmatch(r"[\sA-Za-z/^23.]*", words) and tokens:
        if not any(t.lower() in _NOT_UNITS for t in tokens) and (len(tokens) > 1 or len(tokens[0]) > 1):
            return head.strip()
    return s


def _mixed_number(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)(\d+) (\d+)/(\d+)", s)
    return _proper(m.group(1), m.group(2), m.group(3), m.group(4)) if m else None


def _mixed_latex(s: str) -> Fraction | None:
    m = re.fullmatch(r"(-?)(\d+) ?\\frac\{(\d+)\}\{(\d+)\}", s) or re.fullmatch(r"(-?)(\d+)\\frac(\d)(\d)", s)
    return _proper(m.group(1), m.group(2), m.group(3), m.group(4)) if m else None


def _proper(sign: str, whole: str, num: str, den: str) -> Fraction | None:
    # "2 2/3" is 8/3; "4 10/3" is not a mixed number and not anything else either
    n, d = int(num), int(den)
    if not 0 < n < d:
        return None
    return (int(whole) + Fraction(n, d)) * (-1 if sign else 1)


REL_TOL = Fraction(5, 10**6)  # a decimal must agree to ~6 significant digits...
ROUND_DIGITS = 6  # ...and to 6 decimal places (math-verify's rounding): 1/3 == 0.333333, 1e-7 != 2e-7


def numbers_equal(a: Num, b: Num) -> bool:
    """Exact for exact numbers; a decimal may be a rounded value; ``p%`` may stand for ``p`` or ``p/100``.

    >>> numbers_equal(parse_number("0.333333"), parse_number("1/3"))
    True
    >>> numbers_equal(parse_number("0.0000001"), parse_number("0.0000002"))
    False
    >>> numbers_equal(parse_number("28%"), parse_number("0.28")), numbers_equal(parse_number("28%"), parse_number("0.28%"))
    (True, False)
    """
    left, right = [a.value], [b.value]
    if a.percent and not b.percent:
        left.append(a.value / 100)
    if b.percent and not a.percent:
        right.append(b.value / 100)
    inexact = a.inexact or b.inexact
    return any(_close(x, y, inexact) for x in left for y in right)


def _close(x: Fraction, y: Fraction, inexact: bool) -> bool:
    if x == y:
        return True
    if not inexact:
        return False
    return round(x, ROUND_DIGITS) == round(y, ROUND_DIGITS) and abs(x - y) <= REL_TOL * max(abs(x), abs(y))


# --- what needs no algebra ------------------------------------------------------------------------------

_CHOICE = re.compile(r"\(?([A-E])\)?")
_WORDS = re.compile(r"[A-Za-z]+(?:[ '\-][A-Za-z]+)*")


def _unwrap_text(s: str) -> str:
    for _ in range(3):
        s2 = _TEXT_CMD.sub(r"\1", s).strip()
        if s2 == s:
            break
        s = s2
    return s


def choice_letter(s: str) -> str | None:
    """``C``, ``(C)``, ``\\text{(C)}``, ``\\textbf{C}`` -> ``C``; anything else -> None."""
    m = _CHOICE.fullmatch(_unwrap_text(s).strip().rstrip("."))
    return m.group(1) if m else None


def quick_verdict(pred: str, gold: str) -> bool | None:
    """Decide normalised ``pred`` vs ``gold`` without algebra, or None when sympy must decide."""
    if pred == MALFORMED or gold == MALFORMED or not pred or not gold:
        return False
    if _key(pred) == _key(gold):
        return True
    gold_choice = choice_letter(gold)
    if gold_choice is not None:  # a multiple-choice gold: only the same letter counts
        pred_choice = choice_letter(pred) or choice_letter(pred.upper() if len(pred) <= 3 else pred)
        return pred_choice == gold_choice
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return numbers_equal(p, g)
    pw, gw = _unwrap_text(pred), _unwrap_text(gold)
    p_word, g_word = _is_word(pw), _is_word(gw)
    if p_word or g_word:  # words compare as words: sympy reads "no" and "on" as n*o == o*n
        if p_word and g_word:
            return _word_key(pw) == _word_key(gw)
        if g_word and p is not None or p_word and g is not None:
            return False
    return None


def _key(s: str) -> str:
    # "x + 1" == "x+1", but "1 2" != "12" and "\pi r" != "\pir": keep spaces between word characters
    return _SPACES_NEAR_SYMBOLS.sub("", s)


def _is_word(s: str) -> bool:
    return len(s) >= 2 and _WORDS.fullmatch(s) is not None


def _word_key(s: str) -> str:
    return re.sub(r"[\s'\-]", "", s).casefold()
