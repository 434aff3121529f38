"""Batch CLI: ``python -m sandbox run JOBS.jsonl [--backend docker|local] [--workers N]``.

Reads one job per line, ``{"id": str, "program": str, "timeout_s": float?, "memory_mb": int?}`` (``-`` reads
stdin), and writes one result per line to stdout, in input order:
``{"id", "status", "passed", "duration_s", "stdout", "stderr"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from sandbox.backends import DEFAULT_IMAGE, LocalBackendWarning, SandboxUnavailable
from sandbox.job import Job
from sandbox.pool import Sandbox

JOB_FIELDS = {"id", "program", "timeout_s", "memory_mb"}


def read_jobs(lines, source: str) -> list[Job]:
    """Jobs from JSON lines; a bad line raises ValueError naming the source and the line number.

    >>> read_jobs(['{"id": "a", "program": "pass", "timeout_s": 2}', ''], "jobs.jsonl")
    [Job(id='a', program='pass', timeout_s=2, memory_mb=512)]
    >>> read_jobs(['{"id": "a"}'], "jobs.jsonl")
    Traceback (most recent call last):
    ...
    ValueError: jobs.jsonl:1: a job needs "id" (str) and "program" (str); got keys ['id']
    """
    jobs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e})") from e
        if not isinstance(record, dict) or not {"id", "program"} <= record.keys():
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f'{where}: a job needs "id" (str) and "program" (str); got keys {keys}')
        unknown = record.keys() - JOB_FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; a job has {sorted(JOB_FIELDS)}")
        try:
            jobs.append(Job(**record))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Run untrusted Python programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a JSON-lines file of jobs; results as JSON lines on stdout")
    run.add_argument("jobs", help="JOBS.jsonl, or - for stdin")
    run.add_argument("--backend", choices=("docker", "local"), default="docker")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    run.add_argument("--image", default=DEFAULT_IMAGE)
    run.add_argument("--output-limit-bytes", type=int, default=64 * 1024)
    args = parser.parse_args(argv)

    try:
        if args.jobs == "-":
            jobs = read_jobs(sys.stdin, "<stdin>")
        else:
            with Path(args.jobs).open(encoding="utf-8") as f:
                jobs = read_jobs(f, args.jobs)
    except (OSError, ValueError) as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LocalBackendWarning)
            sb = Sandbox(args.backend, args.workers, args.image, args.output_limit_bytes)
    except SandboxUnavailable as e:
        print(f"sandbox: {e}", file=sys.stderr)
        return 3
    for warning in caught:  # the local backend says that it is weaker, once, on stderr
        print(f"sandbox: {warning.message}", file=sys.stderr)
    with sb:
        results = sb.run(jobs)
    out = sys.stdout
    for result in results:
        out.write(json.dumps(result.to_dict()) + "\n")
    out.flush()
    return 0
