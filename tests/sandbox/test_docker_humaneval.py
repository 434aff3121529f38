"""HumanEval through the Docker pool: every canonical solution passes, the same problems with a wrong body
all fail. The check that the sandbox neither rejects correct programs nor passes wrong ones."""

from __future__ import annotations

import pytest

from sandbox import Job, Sandbox, Status

pytestmark = pytest.mark.docker

WRONG_BODY = "    return None\n"


@pytest.fixture(scope="module")
def humaneval_results(humaneval_problems, humaneval_program):
    jobs = []
    for p in humaneval_problems:
        jobs.append(
            Job(id=f"canonical:{p['task_id']}", program=humaneval_program(p, p["canonical_solution"]))
        )
        jobs.append(Job(id=f"wrong:{p['task_id']}", program=humaneval_program(p, WRONG_BODY)))
    with Sandbox(backend="docker", workers=2) as sb:
        results = sb.run(jobs)
    assert [r.id for r in results] == [j.id for j in jobs]
    return results


def test_all_164_canonical_solutions_pass(humaneval_results):
    canonical = [r for r in humaneval_results if r.id.startswith("canonical:")]
    assert len(canonical) == 164
    failures = {r.id: (r.status.value, r.stderr[-300:]) for r in canonical if not r.passed}
    assert failures == {}


def test_all_164_wrong_bodies_fail(humaneval_results):
    wrong = [r for r in humaneval_results if r.id.startswith("wrong:")]
    assert len(wrong) == 164
    assert [r.id for r in wrong if r.passed] == []
    assert {r.status for r in wrong} == {Status.FAILED}  # failures of the program, not of the sandbox
