"""Sandbox throughput and latency: HumanEval canonical programs through the Docker pool vs. plain python3.

    python benchmarks/sandbox.py [--jobs 3000] [--workers 2] [--backend docker] [--out benchmarks/results/sandbox.json]

Both sides run the same programs (the 164 HumanEval canonical solutions with their tests, repeated to
``--jobs``) with the same number of workers, in the same process, one after the other:
- baseline: one plain, unisolated ``python3 -c PROGRAM`` subprocess per job (no limits, no container);
- sandbox: ``Sandbox(backend).run(jobs)`` on a pool started beforehand (its start-up is reported apart:
  a training run pays it once).
Throughput is jobs/s over the whole batch. Latency is end to end, one job at a time, on a sample
(``Sandbox.run([job])`` vs. one subprocess), p50/p99. Every sandbox result must be a pass; the script
fails otherwise, so a fast but wrong sandbox cannot report a number.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox import Job, Sandbox  # noqa: E402

HUMANEVAL = ROOT.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def humaneval_programs(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return [
        (
            p["task_id"],
            f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n",
        )
        for p in problems
    ]


def default_python() -> str:
    """The system python3 when there is one (a real binary, not a version-manager shim that would make the
    baseline look slow), else the interpreter behind this one."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).is_file() and Path(candidate).read_bytes()[:4] == b"\x7fELF":
            return candidate
    return getattr(sys, "_base_executable", sys.executable)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_plain(python: str, program: str, timeout_s: float) -> tuple[bool, float]:
    start = time.perf_counter()
    done = subprocess.run([python, "-c", program], capture_output=True, timeout=timeout_s)
    return done.returncode == 0, time.perf_counter() - start


def baseline(python: str, programs: list[str], workers: int, timeout_s: float) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda p: run_plain(python, p, timeout_s), programs))
    elapsed = time.perf_counter() - start
    return {"jobs": len(programs), "seconds": elapsed, "jobs_per_s": len(programs) / elapsed,
            "passed": sum(ok for ok, _ in outcomes)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--backend", choices=("docker", "local"), default="docker")
    parser.add_argument("--latency-sample", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=20.0)
    parser.add_argument("--data", type=Path, default=HUMANEVAL)
    parser.add_argument("--python", default=default_python(), help="the baseline's interpreter")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sandbox.json")
    args = parser.parse_args()

    problems = humaneval_programs(args.data)
    batch = [problems[i % len(problems)] for i in range(args.jobs)]
    programs = [program for _, program in batch]
    jobs = [
        Job(id=f"{task}#{i}", program=program, timeout_s=args.timeout_s)
        for i, (task, program) in enumerate(batch)
    ]
    sample = jobs[: args.latency_sample]
    python = args.python

    start = time.perf_counter()
    with Sandbox(backend=args.backend, workers=args.workers) as sb:
        startup_s = time.perf_counter() - start
        sb.run(jobs[: args.workers * 4])  # warm-up: first forks, page cache
        start = time.perf_counter()
        results = sb.run(jobs)
        sandbox_s = time.perf_counter() - start
        latencies = []
        for job in sample:
            t0 = time.perf_counter()
            sb.run([job])
            latencies.append(time.perf_counter() - t0)
    failed = [r for r in results if not r.passed]
    if failed:
        raise SystemExit(f"{len(failed)} canonical programs did not pass in the sandbox, e.g. {failed[0]}")

    base = baseline(python, programs, args.workers, args.timeout_s)
    base_latencies = [run_plain(python, job.program, args.timeout_s)[1] for job in sample]

    report = {
        "benchmark": "sandbox",
        "backend": args.backend,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 1),  # other work on the machine skews both sides
        "jobs": args.jobs,
        "pool_startup_s": round(startup_s, 3),
        "sandbox": {
            "seconds": round(sandbox_s, 3),
            "jobs_per_s": round(args.jobs / sandbox_s, 1),
            "passed": len(results) - len(failed),
            "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
            "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "in_sandbox_p50_ms": round(1000 * statistics.median(r.duration_s for r in results), 2),
        },
        "baseline_plain_python3": {
            "python": python,
            "seconds": round(base["seconds"], 3),
            "jobs_per_s": round(base["jobs_per_s"], 1),
            "passed": base["passed"],
            "latency_p50_ms": round(1000 * statistics.median(base_latencies), 2),
            "latency_p99_ms": round(1000 * percentile(base_latencies, 0.99), 2),
        },
    }
    report["throughput_ratio"] = round(
        report["sandbox"]["jobs_per_s"] / report["baseline_plain_python3"]["jobs_per_s"], 2
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
