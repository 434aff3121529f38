"""The code reward: extraction table, assembly, and scoring through the real sandbox (local backend)."""

from pathlib import Path

import pytest

from reasoner.rewards import code
from reasoner.rewards.code import (
    assemble_program,
    code_reward,
    configure_sandbox,
    extract_program,
    programs_for,
)
from reasoner.tasks.base import Example

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*local backend is WEAKER"
)  # chosen on purpose in these tests
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
HE_PROMPT = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers.\n    >>> add(1, 2)\n    3\n    """\n'
STUB = "def f(x):\n"  # a prefix that does not parse on its own

# (completion, prefix, entry_point, expected program). Completions are shaped like real model outputs.
EXTRACTION = [
    # chat model: prose around a fenced block, no prefix (MBPP)
    (
        "Sure! Here it is:\n```python\ndef f(x):\n    return x + 1\n```\nThis adds one.",
        "",
        "f",
        "def f(x):\n    return x + 1\n",
    ),
    # ```py and a bare ``` fence
    ("```py\ndef f(x):\n    return 2\n```", "", "f", "def f(x):\n    return 2\n"),
    ("```\ndef f(x):\n    return 3\n```", "", None, "def f(x):\n    return 3\n"),
    # unclosed fence: the generation hit max_new_tokens inside the block
    ("```python\ndef f(x):\n    return 4\n", "", "f", "def f(x):\n    return 4\n"),
    # two blocks: the usage example comes first, the one defining the entry point wins
    (
        "```python\nprint(f(1))\n```\n```python\ndef f(x):\n    return 5\n```",
        "",
        "f",
        "def f(x):\n    return 5\n",
    ),
    # HumanEval base-model continuation: the body continues the prompt
    ("    return a + b\n", HE_PROMPT, "add", HE_PROMPT + "    return a + b\n"),
    # continuation followed by the model's own tests: cut at the first top-level statement
    (
        "    return a + b\n\n\nprint(add(1, 2))\nassert add(2, 2) == 4\n",
        HE_PROMPT,
        "add",
        HE_PROMPT + "    return a + b\n\n\n",
    ),
    (
        '    return a + b\n\nif __name__ == "__main__":\n    import doctest\n',
        HE_PROMPT,
        "add",
        HE_PROMPT + "    return a + b\n\n",
    ),
    # ... and at prose
    ("    return a + b\nThis function adds a and b.\n", HE_PROMPT, "add", HE_PROMPT + "    return a + b\n"),
    # a helper function after the body is part of the program
    (
        "    return _h(a) + b\n\n\ndef _h(v):\n    return v\n",
        HE_PROMPT,
        "add",
        HE_PROMPT + "    return _h(a) + b\n\n\ndef _h(v):\n    return v\n",
    ),
    # chat model rewrites the whole function in a fence: it follows the prompt (imports and stubs stay defined)
    (
        "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```",
        HE_PROMPT,
        "add",
        HE_PROMPT.rstrip("\n") + "\n\n\ndef add(a: int, b: int) -> int:\n    return a + b\n",
    ),
    # a fenced function body continues the prompt
    ("```python\n    return a + b\n```", HE_PROMPT, "add", HE_PROMPT + "    return a + b\n"),
    # a prefix that does not parse keeps only its imports before a whole program
    (
        "```python\ndef f(x):\n    return 6\n```",
        "import math\n" + STUB,
        "f",
        "import math\n\ndef f(x):\n    return 6\n",
    ),
    # MBPP whole program: the __main__ block (which may read stdin) is dropped, the rest stays
    (
        'import math\nK = 2\ndef f(x):\n    return x * K\nif __name__ == "__main__":\n    print(f(int(input())))\n',
        "",
        "f",
        "import math\nK = 2\ndef f(x):\n    return x * K\n",
    ),
    # a syntax error is left as written: it fails in the sandbox
    ("    return a +\n", HE_PROMPT, "add", HE_PROMPT + "    return a +\n"),
    # an empty completion leaves the prompt's stub
    ("", HE_PROMPT, "add", HE_PROMPT),
]


@pytest.mark.parametrize(("completion", "prefix", "entry_point", "expected"), EXTRACTION)
def test_extraction_table(completion, prefix, entry_point, expected):
    assert extract_program(completion, prefix, entry_point) == expected


def test_humaneval_assembly_calls_check():
    meta = {"test": "\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n", "entry_point": "add"}
    program = assemble_program(HE_PROMPT + "    return a + b\n", meta)
    assert program.endswith("def check(candidate):\n    assert candidate(1, 2) == 3\n\n\ncheck(add)\n")
    assert program.startswith(HE_PROMPT)


def test_mbpp_assembly_puts_imports_first_and_tests_last():
    meta = {"test_imports": ["import math"], "test_list": ["assert f(1) == 1", "assert f(4) == 2"]}
    program = assemble_program("def f(x):\n    return math.isqrt(x)\n", meta)
    assert (
        program == "import math\ndef f(x):\n    return math.isqrt(x)\n\nassert f(1) == 1\nassert f(4) == 2\n"
    )


def test_example_without_tests_is_a_clear_error():
    with pytest.raises(KeyError, match="test_list"):
        assemble_program("x = 1\n", {})


# --------------------------------------------------------------------------- through the sandbox (local)


@pytest.fixture
def local_sandbox():
    configure_sandbox(backend="local", workers=2, timeout_s=3.0, retries=2)
    yield
    code.close_sandbox()


def _example(tests, prefix=STUB + '    """return x plus 3"""\n', entry="f"):
    return Example(
        prompt=prefix,
        gold="",
        meta={"entry_point": entry, "test_list": tests, "test_imports": [], "code_prefix": prefix},
    )


TESTS = ["assert f(1) == 4", "assert f(0) == 3", "assert f(-3) == 0", "assert f(7) == 10"]


def test_reward_scores_pass_fail_crash_timeout_and_early_exit(local_sandbox):
    completions = [
        "    return x + 3\n",  # right
        "    return x * 3\n",  # wrong answer
        "    return x +\n",  # syntax error
        "    return undefined_name\n",  # crash
        "    while True:\n        pass\n",  # never ends: timeout
        "    import sys\n    sys.exit(0)\n",  # exits before the asserts run: not a pass
        "```python\ndef f(x):\n    return 3 + x\n```",  # fenced rewrite
    ]
    out = code_reward(completions, [_example(TESTS)] * len(completions))
    assert out.scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert out.metrics["code/pass_rate"] == pytest.approx(2 / 7)
    assert out.metrics["code/timeout_rate"] == pytest.approx(1 / 7)
    assert out.metrics["code/sandbox_errors"] == 0


def test_partial_credit_is_the_fraction_of_asserts(local_sandbox):
    # `return 4` passes only the first assert; `return x + 3` all four
    out = code_reward(["    return 4\n", "    return x + 3\n"], [_example(TESTS)] * 2, partial=True)
    assert out.scores == [0.25, 1.0]
    binary = code_reward(["    return 4\n"], [_example(TESTS)])
    assert binary.scores == [0.0]


class FlakySandbox:
    """The real local sandbox, except that the first ``failures`` runs of job ``flaky_id`` report a sandbox error."""

    def __init__(self, inner, flaky_id: str, failures: int):
        self.inner, self.flaky_id, self.failures = inner, flaky_id, failures

    def run(self, jobs):
        from sandbox import Result, Status

        results = self.inner.run(jobs)
        for i, job in enumerate(jobs):
            if job.id == self.flaky_id and self.failures > 0:
                self.failures -= 1
                results[i] = Result(job.id, Status.ERROR, False, 0.0, "", "container vanished")
        return results

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


@pytest.mark.parametrize(("failures", "expected"), [(1, 1.0), (2, 1.0), (3, None)])
def test_sandbox_errors_are_retried_then_masked_never_zero(local_sandbox, failures, expected):
    configure_sandbox(retries=2)
    code._sandbox = FlakySandbox(code._get_sandbox(), flaky_id="1.0", failures=failures)
    out = code_reward(["    return x + 3\n"] * 2, [_example(TESTS)] * 2)
    assert out.scores == [1.0, expected]
    assert out.metrics["code/retried_jobs"] == min(failures, 2)
    assert out.metrics["code/sandbox_errors"] == (expected is None)


def test_configure_rejects_unknown_backend():
    with pytest.raises(ValueError, match="docker' or 'local"):
        configure_sandbox(backend="podman")


def test_humaneval_canonical_and_broken_solutions_local(local_sandbox):
    from reasoner.tasks.humaneval import load

    examples = load(str(SHARED / "humaneval" / "HumanEval.jsonl.gz"), "test", None, 0)[:6]
    right = code_reward([ex.solution for ex in examples], examples)
    assert right.scores == [1.0] * 6
    wrong = code_reward(["    return None\n"] * 6, examples)
    assert wrong.scores == [0.0] * 6


def test_programs_for_uses_the_prompt_when_no_code_prefix():
    ex = Example(prompt="def f(x):\n", gold="", meta={"entry_point": "f", "test_list": ["assert f(1) == 1"]})
    assert programs_for("    return x\n", ex) == ["def f(x):\n    return x\n\nassert f(1) == 1\n"]
