"""Job validation and the result record (no backend needed)."""

from __future__ import annotations

import pytest

from sandbox import Job, Result, Status


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": 3, "program": "pass"}, "id must be a str"),
        ({"id": "a", "program": b"pass"}, "program must be a str"),
        ({"id": "a", "program": "pass", "timeout_s": -1}, "timeout_s must be a positive"),
        ({"id": "a", "program": "pass", "timeout_s": float("inf")}, "timeout_s must be a positive"),
        ({"id": "a", "program": "pass", "memory_mb": 1.5}, "memory_mb must be an int"),
        ({"id": "a", "program": "pass", "memory_mb": 4}, "memory_mb must be an int >= 16"),
    ],
)
def test_bad_jobs_are_rejected_with_the_field_named(fields, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Job(**fields)


def test_result_record_has_exactly_the_cli_fields():
    record = Result("a", Status.TIMEOUT, False, 1.5, "out", "err").to_dict()
    assert record == {
        "id": "a",
        "status": "timeout",
        "passed": False,
        "duration_s": 1.5,
        "stdout": "out",
        "stderr": "err",
    }


def test_status_values_are_the_contract():
    assert [s.value for s in Status] == ["passed", "failed", "timeout", "memory", "error"]
