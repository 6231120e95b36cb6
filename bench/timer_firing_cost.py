"""CPU per timer firing in an rq worker, before and after batching (issue 17), in one run.

The timers are those of ``bench/timers.py`` (``bench/timers_bundle``: start, an intermediate
timer, end), each enqueued in rq as the API does after commit. Two ways of firing them take
turns, round after round, on the same machine at the same time, so that whatever else runs on
the host weighs on both alike:

- **one per job** (before): each job fires its own timer in its own transaction
  (``firing.fire_once``), as ``engine.jobs.fire_timer_job`` did;
- **batched** (after): ``engine.jobs.fire_timer_job`` as it is, a job firing up to
  ``firing.BATCH`` due timers in one transaction and dropping the others' jobs.

Each round creates ``--timers`` instances for each way, waits until they are due, then works
the queue with rq's worker in burst mode inside this process (the worker ``bpm worker`` runs,
without its sweep thread and rq's scheduler process: the jobs are queued already), and reads
this process's CPU time around it. Every job sees all timers due at once: the batches are as
full as they get, which a live run reaches only under a backlog (``bench/timers.py`` prints the
live figure).

    PYTHONPATH=. .venv/bin/python bench/timer_firing_cost.py --redis-url redis://127.0.0.1:6379/13
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's engine, also for the job functions rq imports

from sqlalchemy import func, select  # noqa: E402

from bench import timers as bench  # noqa: E402
from engine.models import AuditEvent, Timer  # noqa: E402
from engine.timers import firing, queueing  # noqa: E402

ALONE_JOB = "bench.timer_firing_cost.fire_alone_job"


def fire_alone_job(timer_id: int) -> bool:
    """The job as it was before batching: one timer, one transaction."""
    from engine import jobs

    db, rt = jobs._context()
    return firing.fire_once(db, rt, timer_id)


def one_round(db, rt, scheduler, worker_factory, function: str, count: int, first: int) -> tuple[int, float]:
    """Create ``count`` due-soon timers, enqueue each as ``function``'s job, work the queue
    once they are due; returns (firings, CPU seconds of the worker)."""
    due = rt.now() + timedelta(seconds=2.0 + count / 40.0)
    created: list[int] = []
    for n in range(first, first + count):
        with db.transaction() as s:
            instance = bench.instances.start(s, rt, process_key=bench.PROCESS_KEY, business_key=f"C-{n:06d}",
                                             actor=bench.ACTOR, data={"fire_at": due.isoformat()})
            created.append(instance.id)
    with db.transaction() as s:
        timer_ids = list(s.execute(select(Timer.id).where(Timer.instance_id.in_(created),
                                                          Timer.status == "waiting")).scalars())
    for timer_id in timer_ids:
        scheduler.queue.enqueue(function, timer_id, job_id=queueing.job_id(timer_id), retry=queueing.RETRY,
                                result_ttl=0, failure_ttl=3600)
    remaining = (due - rt.now()).total_seconds() + 0.1
    if remaining > 0:
        time.sleep(remaining)
    worker = worker_factory()
    cpu = time.process_time()
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    cpu = time.process_time() - cpu
    with db.transaction() as s:
        fired = s.execute(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.kind == "timer.fired", AuditEvent.instance_id.in_(created))).scalar_one()
        twice = s.execute(select(func.count()).select_from(
            select(AuditEvent.instance_id).where(AuditEvent.kind == "timer.fired", AuditEvent.instance_id.in_(created))
            .group_by(AuditEvent.instance_id).having(func.count() > 1).subquery())).scalar_one()
    if fired != len(timer_ids) or twice:
        raise bench.BenchError(f"{len(timer_ids)} timers: {fired} fired, {twice} twice")
    return fired, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=300, help="timers per way and round (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each way once per round (default 3)")
    parser.add_argument("--database", default="bench_timer_firing_cost")
    parser.add_argument("--server-url", default=bench.SERVER_URL)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="a spare Redis database")
    args = parser.parse_args()

    url = bench.bench_url(args.server_url, args.database)
    bench.prepare_database(url, args.server_url)
    database_url = bench.url_string(url)
    redis = bench.redis_connection(args.redis_url)
    redis.flushdb()
    bench.warn_foreign(redis, "firing cost")
    os.environ.update({"BPM_DATABASE_URL": database_url, "BPM_AUDIT_KEY": bench.BENCH_AUDIT_KEY,
                       "BPM_REDIS_URL": args.redis_url})
    db, rt = bench.make_runtime(database_url, None)
    bench.deploy(db, rt)
    from api.worker import make_worker
    from engine import jobs

    jobs._context()  # the worker's database pool and runtime, built before the first measure
    scheduler = queueing.RqScheduler(args.redis_url)
    ways = {"one per job (before)": ALONE_JOB, "batched (after)": queueing.FIRE_JOB}
    per_firing: dict[str, list[float]] = {name: [] for name in ways}
    print(f"Timer firing cost: {args.timers} timers per way and round, {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    first = 0
    for n in range(args.rounds):
        for name, function in ways.items():
            fired, cpu = one_round(db, rt, scheduler, lambda: make_worker(args.redis_url), function,
                                   args.timers, first)
            first += args.timers
            per_firing[name].append(cpu * 1000.0 / fired)
            print(f"  round {n + 1}, {name}: {fired} fired, worker CPU {cpu:.2f} s = "
                  f"{cpu * 1000.0 / fired:.2f} ms per firing; load average {os.getloadavg()[0]:.1f}", flush=True)
    print()
    print(f"  {'way':<24}{'median ms':>10}{'min ms':>9}{'max ms':>9}   CPU per firing in the worker")
    for name, values in per_firing.items():
        print(f"  {name:<24}{statistics.median(values):>10.2f}{min(values):>9.2f}{max(values):>9.2f}")
    print(f"  target: batched <= 2.00 ms; load average {os.getloadavg()[0]:.1f} at the end")
    db.dispose()
    redis.flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
