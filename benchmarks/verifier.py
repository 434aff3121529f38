"""Math checker throughput and correctness: ours (``score_batch``) vs. calling math-verify directly.

    python benchmarks/verifier.py [--limit 1319] [--math-limit 480] [--workers 2] [--out benchmarks/results/verifier.json]

Two sets, each with labelled right and wrong completions:
- GSM8K: the test split's reference solutions against their ``####`` answer (right), and the same
  solutions with the final answer changed (wrong).
- MATH-style: generated ``\\boxed{}`` completions whose answer is an equivalent rewriting of the gold
  (``\\frac{6}{8}`` for ``\\frac34``, ``(x+a)(x+b)`` for the expanded polynomial, ``\\left[a, b\\right)`` ...)
  or a near miss (a changed bracket, entry, sign or digit), plus two families of math-verify false
  positives from its issue tracker (tiny values such as ``1/2^{40}`` vs ``1/2^{41}``; mixed numbers such as
  ``2\\frac{2}{3}`` read as ``4/3``). Every pair is distinct.

In the same process, one after the other: math-verify the way its README shows
(``verify(parse(gold), parse(completion))``, its signal timeouts on, one core), then ours with one worker
process (per core) and with ``--workers`` (total). Pool start-up is excluded (a training run pays it once).
Besides checks/s the table shows each checker's false positives (wrong scored 1) and false negatives.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasoner.rewards.math import default_workers, score_batch  # noqa: E402

# ../shared/data beside the repo, or $REASONER_SHARED_DATA (as in the tests)
GSM8K = Path(os.environ.get("REASONER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "gsm8k" / "test.jsonl"

Example = tuple[str, str, bool]  # (completion, gold, is the completion right)


def gsm8k_set(path: Path, limit: int) -> list[Example]:
    with open(path) as f:
        solutions = [json.loads(line)["answer"] for line in f if line.strip()][:limit]
    out: list[Example] = []
    for solution in solutions:
        body, answer = solution.rsplit("####", 1)
        gold = answer.strip().replace(",", "")
        out.append((solution, gold, True))
        out.append((body + f"#### {int(gold) + 7}", gold, False))
    return out


def _frac(rng: random.Random) -> tuple[str, list[str], list[str]]:
    b = rng.randint(2, 40)
    a = rng.choice([n for n in range(1, 3 * b) if _gcd(n, b) == 1])
    k = rng.randint(2, 9)
    right = [f"\\dfrac{{{a * k}}}{{{b * k}}}", f"{a}/{b}", f"\\frac{{-{a}}}{{-{b}}}"]
    return f"\\frac{{{a}}}{{{b}}}", right, [f"\\frac{{{a + 1}}}{{{b}}}", f"\\frac{{{b}}}{{{a}}}"]


def _radical(rng: random.Random) -> tuple[str, list[str], list[str]]:
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11, 13, 14, 15])
    unbraced = f"{k}\\sqrt {m}" if m < 10 else f"{k}\\sqrt{{{m}}}"  # TeX: \sqrt 15 is \sqrt{1}5
    right = [f"\\sqrt{{{k * k * m}}}", unbraced, f"\\frac{{{2 * k}\\sqrt{{{m}}}}}{{2}}"]
    return f"{k}\\sqrt{{{m}}}", right, [f"{k}\\sqrt{{{m + 1}}}", f"{k + 1}\\sqrt{{{m}}}"]


def _pi(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(1, 12), rng.choice([2, 3, 4, 6, 8, 12])
    right = [f"\\frac{{{a}}}{{{b}}}\\pi", f"\\frac{{{a}\\pi}}{{{b}}}", f"{a}\\pi/{b}"]
    return f"\\frac{{{a}\\pi}}{{{b}}}", right, [f"\\frac{{{a}\\pi}}{{{b + 1}}}", f"\\frac{{{a}}}{{{b}}}"]


def _poly(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    gold = f"x^2+{a + b}x+{a * b}"
    right = [f"(x+{a})(x+{b})", f"(x+{b})(x+{a})", f"{a * b}+{a + b}x+x^2"]
    return gold, right, [f"(x+{a})(x-{b})", f"x^2+{a + b}x+{a * b + 1}"]


def _interval(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a = rng.randint(-9, 5)
    b = a + rng.randint(1, 9)
    right = [f"\\left[{a}, {b}\\right)", f"[{a},{b})"]
    return f"[{a}, {b})", right, [f"({a}, {b})", f"[{a}, {b}]", f"[{a}, {b + 1})"]


def _roots(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.sample(range(-12, 13), 2)
    right = [f"{b}, {a}", f"\\{{{a}, {b}\\}}", f"x={a} \\text{{ or }} x={b}"]
    return f"{a}, {b}", right, [f"{a}, {b + 1}", f"{a}"]


def _tuple(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b, c = (rng.randint(-9, 9) for _ in range(3))
    right = [f"\\left( {a}, {b}, {c} \\right)", f"({a},{b},{c})"]
    return f"({a}, {b}, {c})", right, [f"({b}, {a}, {c + 1})", f"({a}, {b}, {c + 1})"]


def _matrix(rng: random.Random) -> tuple[str, list[str], list[str]]:
    e = [rng.randint(-9, 9) for _ in range(4)]
    body = f"{e[0]} & {e[1]} \\\\ {e[2]} & {e[3]}"
    wrong = f"{e[0]} & {e[1]} \\\\ {e[2]} & {e[3] + 1}"
    gold = f"\\begin{{pmatrix}} {body} \\end{{pmatrix}}"
    return (
        gold,
        [f"\\begin{{bmatrix}} {body} \\end{{bmatrix}}"],
        [f"\\begin{{pmatrix}} {wrong} \\end{{pmatrix}}"],
    )


def _line(rng: random.Random) -> tuple[str, list[str], list[str]]:
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    right = [f"y = {b} + {a}x", f"y={a}x+{b}"]
    return f"y = {a}x + {b}", right, [f"y = {a}x - {b}", f"y = {a + 1}x + {b}"]


def _units(rng: random.Random) -> tuple[str, list[str], list[str]]:
    n = rng.randint(10, 999)
    right = [f"{n}^\\circ", f"{n}\\text{{ cm}}", f"{n}.0"]
    return str(n), right, [f"{n + 1}^\\circ", f"{n * 10}", f"{n / 10}"]


def _tiny(rng: random.Random) -> tuple[str, list[str], list[str]]:
    # math-verify compares with evalf(chop=True): tiny values all equal 0 (its issue #14)
    k = rng.randint(25, 60)
    return (
        f"\\frac{{1}}{{2^{{{k}}}}}",
        [f"2^{{-{k}}}"],
        [f"\\frac{{1}}{{2^{{{k + 1}}}}}", f"\\frac{{3}}{{2^{{{k}}}}}"],
    )


def _mixed(rng: random.Random) -> tuple[str, list[str], list[str]]:
    # "2\frac{2}{3}" is the mixed number 8/3; sympy reads it as 2*2/3 (math-verify PR #81)
    d = rng.randint(3, 9)
    w, n = rng.randint(1, 9), rng.randint(1, d - 1)
    if rng.random() < 0.5:
        return (
            f"\\frac{{{w * d + n}}}{{{d}}}",
            [f"{w}\\frac{{{n}}}{{{d}}}", f"{w} {n}/{d}"],
            [f"{w + 1} {n}/{d}"],
        )
    return f"\\frac{{{w * n}}}{{{d}}}", [], [f"{w}\\frac{{{n}}}{{{d}}}", f"{w} {n}/{d}"]


GENERATORS: list[Callable[[random.Random], tuple[str, list[str], list[str]]]] = [
    _frac,
    _radical,
    _pi,
    _poly,
    _interval,
    _roots,
    _tuple,
    _matrix,
    _line,
    _units,
    _tiny,
    _mixed,
]


def math_style_set(limit: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < limit:
        gold, right, wrong = rng.choice(GENERATORS)(rng)
        for pred, label in [(p, True) for p in right] + [(p, False) for p in wrong]:
            lead = f"Let me work through it: {rng.randint(2, 99)} and {rng.randint(2, 99)} give us the setup."
            completion = f"{lead}\nTherefore, the final answer is $\\boxed{{{pred}}}$."
            if (completion, gold) not in seen and len(out) < limit:
                seen.add((completion, gold))
                out.append((completion, gold, label))
    return out


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def run_math_verify(examples: list[Example], math_style: bool) -> list[float]:
    from math_verify import parse, verify

    return [
        float(verify(parse(f"${gold}$" if math_style else gold), parse(completion)))
        for completion, gold, _ in examples
    ]


def measure(name: str, score: Callable[[], list[float]], examples: list[Example]) -> dict:
    start = time.perf_counter()
    scores = score()
    seconds = time.perf_counter() - start
    labels = [label for _, _, label in examples]
    return {
        "checker": name,
        "checks": len(examples),
        "seconds": round(seconds, 3),
        "checks_per_s": round(len(examples) / seconds, 1),
        "false_positives": sum(s == 1.0 and not y for s, y in zip(scores, labels, strict=True)),
        "false_negatives": sum(s != 1.0 and y for s, y in zip(scores, labels, strict=True)),
    }


def bench_set(name: str, examples: list[Example], workers: int, math_style: bool) -> dict:
    completions, golds = [c for c, _, _ in examples], [g for _, g, _ in examples]
    rows = [
        measure("math-verify (1 core)", lambda: run_math_verify(examples, math_style), examples),
        measure("ours, 1 worker", lambda: score_batch(completions, golds, workers=1), examples),
        measure(
            f"ours, {workers} workers", lambda: score_batch(completions, golds, workers=workers), examples
        ),
    ]
    base = rows[0]["checks_per_s"]
    return {
        "set": name,
        "rows": rows,
        "ratio_per_core": round(rows[1]["checks_per_s"] / base, 2),
        "ratio_total": round(rows[2]["checks_per_s"] / base, 2),
    }


def print_table(results: list[dict]) -> None:
    print(f"{'set':<11} {'checker':<22} {'checks':>7} {'seconds':>8} {'checks/s':>10} {'FP':>4} {'FN':>4}")
    for result in results:
        for row in result["rows"]:
            print(
                f"{result['set']:<11} {row['checker']:<22} {row['checks']:>7} {row['seconds']:>8.2f} "
                f"{row['checks_per_s']:>10.1f} {row['false_positives']:>4} {row['false_negatives']:>4}"
            )
        print(
            f"{result['set']:<11} ratio vs math-verify: {result['ratio_per_core']}x per core, "
            f"{result['ratio_total']}x in total"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1319, help="GSM8K test problems (each gives 2 checks)")
    parser.add_argument("--math-limit", type=int, default=480, help="MATH-style checks")
    parser.add_argument("--workers", type=int, default=default_workers(), help="worker processes for 'total'")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "verifier.json")
    args = parser.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    score_batch(["\\boxed{x^2}"] * 2, ["x \\cdot x", "x^3"], workers=args.workers)  # start the pool
    run_math_verify([("\\boxed{x^2}", "x \\cdot x", True)], math_style=True)  # and build math-verify's parser
    results = [
        bench_set("gsm8k", gsm8k_set(GSM8K, args.limit), args.workers, math_style=False),
        bench_set("math-style", math_style_set(args.math_limit), args.workers, math_style=True),
    ]
    print_table(results)
    report = {"cpus": os.cpu_count(), "workers": args.workers, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
