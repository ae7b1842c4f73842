"""``python -m bench.run``: run the benchmarks, print a table, write ``bench/results/latest.json``.

Task benchmarks alternate bare and instrumented runs (A/B, order swapped each repeat) and report medians
with min-max; goals are ratios, so absolute drift of the machine cancels out. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import RABBITMQ, RESULTS, Sink, Summary, setup_django
from bench.report import Row, cpu_ticks, fmt, machine, render, steal_percent

SECTIONS = (
    "child_path", "throughput", "publish", "latency", "countdown", "sweep", "notifications", "fanout", "lag",
    "dead_letters", "memory", "flood", "ratelimit",
)  # fmt: skip


#: The task benchmarks, which run on either broker (``BENCH_BROKER_URL``); the others use Redis as the broker.
RABBITMQ_SECTIONS = ("throughput", "publish", "latency", "countdown")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Smoke run (3-4 min): small sizes for everything.")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"Comma-separated sections: {', '.join(SECTIONS)}.")
    parser.add_argument("--repeats", type=int, default=3, help="A/B repeats of each task benchmark (default 3).")
    parser.add_argument("--child-tasks", type=int, help="Tasks per in-process child run (default 10000; quick 2000).")
    parser.add_argument("--tasks", type=int, help="Messages per throughput run (default 10000; quick 2000).")
    parser.add_argument("--publish-count", type=int, help="Messages per publish-only run (default 10000; quick 2000).")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="Tasks per second (default 200).")
    parser.add_argument("--latency-seconds", type=float, help="Seconds of publishing per run (default 10; quick 3).")
    parser.add_argument("--countdowns", type=int, help="Countdown tasks per run (default 500; quick 100).")
    parser.add_argument(
        "--countdown-spread", type=float, help="Countdowns drawn from 1 s to this (default 10 s; quick 4)."
    )
    parser.add_argument("--promos", help="Comma-separated promo table sizes (default 10000,100000; 1000000 works).")
    parser.add_argument("--due-percent", type=float, default=1.0, help="Share of promos due in the sweep (default 1).")
    parser.add_argument("--notifications", type=int, help="Pending notifications (default 100000; quick 10000).")
    parser.add_argument(
        "--fanout-subscribers", type=int, help="Subscribers of the fan-out's promo (default 1000000; quick 100000)."
    )
    parser.add_argument("--fanout-batch-size", type=int, help="Fan-out batch size (default: the setting's).")
    parser.add_argument("--lag-promos", type=int, help="Promos with staggered starts (default 200; quick 50).")
    parser.add_argument("--lag-spread", type=float, help="Seconds the starts spread over (default 20; quick 6).")
    parser.add_argument("--dead-letters", type=int, help="Dead letters for the listing (default 100000; quick 20000).")
    parser.add_argument("--replay", type=int, help="Entries of the unthrottled replay (default 5000; quick 1000).")
    parser.add_argument("--replay-rate", type=float, default=500.0, help="Asked --rate (default 500/s).")
    parser.add_argument("--rate-count", type=int, help="Entries of the paced replay (default 2000; quick 500).")
    parser.add_argument(
        "--memory", help="Comma-separated cumulative task counts (default 10000,40000; the goal names 10000,100000)."
    )
    parser.add_argument(
        "--max-tasks-per-child", type=int,
        help="Pool child recycling of the throughput and latency workers (default: the project's, 1000).",
    )  # fmt: skip
    parser.add_argument(
        "--contrib-e2e", action="store_true",
        help="Also run the contrib instrumentation (bench.contrib) end to end and publishing: 3 more worker runs.",
    )  # fmt: skip
    parser.add_argument("--flood", type=int, help="Notifications of the flood promo (default 4000; quick 1000).")
    parser.add_argument("--flood-promos", type=int, help="Other promos starting during it (default 100; quick 30).")
    parser.add_argument("--flood-spread", type=float, default=15.0, help="Seconds their starts spread over (15).")
    parser.add_argument("--smtp-delay-ms", type=float, default=20.0, help="The provider's time per message (20).")
    parser.add_argument("--ratelimit-rate", type=float, default=200.0, help="The channel's limit (default 200/s).")
    parser.add_argument("--ratelimit-notifications", type=int, help="Rate-limited backlog (default 4000; quick 1000).")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="Where the JSON goes.")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "child_tasks": 2000 if quick else 10000,
        "tasks": 2000 if quick else 10000,
        "publish_count": 2000 if quick else 10000,
        "latency_seconds": 3.0 if quick else 10.0,
        "countdowns": 100 if quick else 500,
        "countdown_spread": 4.0 if quick else 10.0,
        "promos": "10000" if quick else "10000,100000",
        "notifications": 10000 if quick else 100000,
        "fanout_subscribers": 100000 if quick else 1000000,
        "lag_promos": 50 if quick else 200,
        "lag_spread": 6.0 if quick else 20.0,
        "dead_letters": 20000 if quick else 100000,
        "replay": 1000 if quick else 5000,
        "rate_count": 500 if quick else 2000,
        "memory": "1000,4000" if quick else "10000,40000",
        "flood": 1000 if quick else 4000,
        "flood_promos": 30 if quick else 100,
        "ratelimit_notifications": 1000 if quick else 4000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def _alternate(
    repeats: int, run: Callable[[str, str], Any], variants: tuple[str, ...] = ("bare", "observable")
) -> dict[str, list[Any]]:
    """Run ``run(variant, tag)`` for every variant, the order reversed every repeat."""
    results: dict[str, list[Any]] = {variant: [] for variant in variants}
    for repeat in range(repeats):
        order = variants if repeat % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            results[variant].append(run(variant, str(repeat)))
            print(f"  {variant} #{repeat + 1}: {results[variant][-1]}", flush=True)
    return results


def _worker_args(args: argparse.Namespace) -> list[str]:
    return [f"--max-tasks-per-child={args.max_tasks_per_child}"] if args.max_tasks_per_child else []


def _pairs(runs: dict[str, list[Any]], variant: str = "observable") -> list[tuple[Any, Any]]:
    """(bare, ``variant``) runs of the same repeat, measured side by side."""
    return list(zip(runs["bare"], runs[variant], strict=True))


def bench_child_path(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.child_path import VARIANTS, measure

    result = measure(args.child_tasks, args.repeats, sink)
    out["child_path"] = result
    cpu = {variant: Summary.of(result[variant]["cpu_us"]["samples"]) for variant in VARIANTS}
    added = {variant: Summary.of(result[variant]["added_cpu_us"]["samples"]) for variant in VARIANTS[1:]}
    share = Summary.of(result["observable_share_of_contrib"]["samples"])
    rows += [
        Row(
            "1. child CPU us/task in-process: bare / reliability / observable / contrib",
            " / ".join(f"{cpu[variant].median:,.0f}" for variant in VARIANTS),
            "",
            None,
        ),
        Row("1. child CPU added: ObservableTask, integrations off", fmt(added["reliability"], " us"), "", None),
        Row("1. child CPU added: contrib celery instrumentation", fmt(added["contrib"], " us"), "", None),
        Row(
            "1. child CPU added: ObservableTask, all on",
            fmt(added["observable"], " us"),
            "<= ~100 us",
            added["observable"].median <= 100,
        ),
        Row(
            "1. ObservableTask's added CPU / contrib's",
            fmt(share, digits=2),
            "<= 0.25 (a quarter)",
            share.median <= 0.25,
        ),
        Row(
            "1. child's background-thread wake-ups per task, observable / contrib (per batch: ~0.002)",
            " / ".join(
                f"{Summary.of(result[variant]['background_switches']['samples']).median:.3f}"
                for variant in ("observable", "contrib")
            ),
            "",
            None,
        ),
    ]


def bench_throughput(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.throughput import throughput_run

    # A discarded warm-up pair: the second task run of a session came out 20-50% slow whatever its variant (4 of
    # 7 sessions on the 09:00 machine), and the A/B order gives that slot to the instrumented variant.
    for variant in ("bare", "observable"):
        warm_up = throughput_run(variant, sink, min(args.tasks, 2000), "warm-up", _worker_args(args))
        print(f"  {variant} warm-up (discarded): {warm_up}", flush=True)
    variants = ("bare", "observable", "contrib") if args.contrib_e2e else ("bare", "observable")
    runs = _alternate(
        args.repeats, lambda v, tag: throughput_run(v, sink, args.tasks, tag, _worker_args(args)), variants
    )
    e2e = {v: Summary.of([r.end_to_end_per_second for r in runs[v]]) for v in runs}
    pub = {v: Summary.of([r.publish_per_second for r in runs[v]]) for v in runs}
    # Pairwise ratios of the runs made side by side (each variant against bare), then their median.
    e2e_ratio = {v: Summary.of([o.end_to_end_per_second / b.end_to_end_per_second for b, o in _pairs(runs, v)])
                 for v in variants[1:]}  # fmt: skip
    pub_ratio = {v: Summary.of([o.publish_per_second / b.publish_per_second for b, o in _pairs(runs, v)])
                 for v in variants[1:]}  # fmt: skip
    lines = {v: [r.summary_lines for r in runs[v]] for v in runs}
    main_cpu = {v: Summary.of([r.main_cpu_us for r in runs[v]]) for v in runs}
    child_cpu = {v: Summary.of([r.child_cpu_us for r in runs[v]]) for v in runs}
    child_added = Summary.of([o.child_cpu_us - b.child_cpu_us for b, o in _pairs(runs)])
    skew = {v: [r.busiest_child_share for r in runs[v] if r.busiest_child_share is not None] for v in runs}
    out["throughput"] = {
        "tasks_per_run": args.tasks,
        "end_to_end_per_second": {v: s.to_json() for v, s in e2e.items()},
        "end_to_end_ratio": {v: s.to_json() for v, s in e2e_ratio.items()},
        "publish_per_second": {v: s.to_json() for v, s in pub.items()},
        "publish_ratio": {v: s.to_json() for v, s in pub_ratio.items()},
        "summary_log_lines": lines,
        "main_cpu_us_per_task": {v: s.to_json() for v, s in main_cpu.items()},
        "child_cpu_us_per_task": {v: s.to_json() for v, s in child_cpu.items()},
        "child_cpu_us_added": child_added.to_json(),
        "busiest_child_share": {v: [r.busiest_child_share for r in runs[v]] for v in runs},
        "sink_requests": dict(sink.requests),
    }
    names = " / ".join(variants)
    ratio = e2e_ratio["observable"]
    rows += [
        Row("1. e2e tasks/s, bare celery.Task", fmt(e2e["bare"]), "", None),
        Row("1. e2e tasks/s, ObservableTask (all on)", fmt(e2e["observable"]), "", None),
        Row("1. e2e ratio observable/bare", fmt(ratio, digits=2), ">= 0.90", ratio.median >= 0.9),
    ]
    if "contrib" in runs:
        rows += [
            Row("1. e2e tasks/s, contrib reference", fmt(e2e["contrib"]), "", None),
            Row("1. e2e ratio contrib/bare (issue: 0.75-0.82)", fmt(e2e_ratio["contrib"], digits=2), "", None),
        ]
    rows += [
        Row(f"1. worker main CPU us/task, {names}", " / ".join(fmt(main_cpu[v]) for v in runs), "", None),
        Row(f"1. children CPU us/task, {names}", " / ".join(fmt(child_cpu[v]) for v in runs), "", None),
        Row("1. children CPU added per task (e2e; the in-process rows are the goal's)", fmt(child_added, " us"), "",
            None),
        Row(
            f"1. busiest child's share of children CPU, {names}",
            " / ".join(fmt(Summary.of(skew[v]), digits=2) if skew[v] else "n/a (recycled)" for v in runs),
            "",
            None,
        ),
        Row("2. publish .delay()/s, bare", fmt(pub["bare"]), "", None),
        Row("2. publish .delay()/s, instrumented", fmt(pub["observable"]), "", None),
        Row("2. publish ratio", fmt(pub_ratio["observable"], digits=2), ">= 0.90",
            pub_ratio["observable"].median >= 0.9),
    ]  # fmt: skip
    if "contrib" in runs:
        rows += [
            Row("2. publish .delay()/s, contrib reference", fmt(pub["contrib"]), "", None),
            Row("2. publish ratio contrib/bare (issue: 0.75-0.81)", fmt(pub_ratio["contrib"], digits=2), "", None),
        ]


def bench_publish(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.throughput import publish_run

    # The producer alone, no worker: the price of the publish path (producer span, headers, counters) without a
    # worker's drain taking the same two cores. The throughput section's publish rows come from its pre-fill.
    variants = ("bare", "observable", "contrib") if args.contrib_e2e else ("bare", "observable")
    figures = _alternate(args.repeats, lambda v, tag: publish_run(v, sink, args.publish_count), variants)
    runs = {v: [wall for wall, _ in figures[v]] for v in figures}
    cpu_runs = {v: [cpu for _, cpu in figures[v]] for v in figures}
    pub = {v: Summary.of(runs[v]) for v in runs}
    ratio = {v: Summary.of([o / b for b, o in _pairs(runs, v)]) for v in variants[1:]}
    # The same ratio per CPU second of the producer: a check of the wall-clock one when the machine is shared.
    cpu_ratio = {v: Summary.of([o / b for b, o in _pairs(cpu_runs, v)]) for v in variants[1:]}
    out["publish"] = {
        "messages_per_run": args.publish_count,
        "publish_per_second": {v: s.to_json() for v, s in pub.items()},
        "publish_ratio": {v: s.to_json() for v, s in ratio.items()},
        "publish_per_cpu_second": {v: Summary.of(cpu_runs[v]).to_json() for v in cpu_runs},
        "publish_cpu_ratio": {v: s.to_json() for v, s in cpu_ratio.items()},
    }
    rows += [
        Row("2b. publish-only .delay()/s, bare", fmt(pub["bare"]), "", None),
        Row("2b. publish-only .delay()/s, instrumented", fmt(pub["observable"]), "", None),
        Row("2b. publish-only ratio", fmt(ratio["observable"], digits=2), ">= 0.90", ratio["observable"].median >= 0.9),
        Row("2b. publish-only ratio per producer CPU second", fmt(cpu_ratio["observable"], digits=2), "", None),
    ]
    if "contrib" in runs:
        rows.append(Row("2b. publish-only ratio contrib/bare", fmt(ratio["contrib"], digits=2), "", None))


def bench_latency(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.throughput import latency_run

    runs = _alternate(
        args.repeats,
        lambda v, tag: latency_run(v, sink, args.latency_rate, args.latency_seconds, tag, _worker_args(args)),
    )
    section: dict[str, Any] = {"rate": args.latency_rate, "seconds": args.latency_seconds}
    for variant, results in runs.items():
        section[variant] = {
            q: Summary.of([getattr(r, q) for r in results]).to_json() for q in ("p50_ms", "p95_ms", "p99_ms")
        }
        section[variant]["samples"] = [r.samples for r in results]
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            summary = Summary.of([getattr(r, q) for r in results])
            rows.append(
                Row(f"3. latency {q[:-3]} ms @{args.latency_rate:.0f}/s, {variant}", fmt(summary, digits=2), "", None)
            )
    added = Summary.of([o.p99_ms - b.p99_ms for b, o in _pairs(runs)])
    section["p99_added_ms"] = added.to_json()
    out["latency"] = section
    rows.append(Row("3. latency p99 added (ms)", fmt(added, digits=2), "<= 1 ms", added.median <= 1.0))


def bench_countdown(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.throughput import countdown_run

    runs = _alternate(
        args.repeats,
        lambda v, tag: countdown_run(v, sink, args.countdowns, args.countdown_spread, tag, _worker_args(args)),
    )
    section: dict[str, Any] = {"countdowns": args.countdowns, "spread_seconds": args.countdown_spread}
    for variant, results in runs.items():
        figures = ("p50_ms", "p99_ms", "max_ms", "earliest_ms")
        section[variant] = {q: Summary.of([getattr(r, q) for r in results]).to_json() for q in figures}
        section[variant]["early"] = [r.early for r in results]
        section[variant]["samples"] = [r.samples for r in results]
        for q in ("p50_ms", "p99_ms", "max_ms"):
            summary = Summary.of([getattr(r, q) for r in results])
            rows.append(Row(f"3b. countdown lateness {q[:-3]} ms, {variant}", fmt(summary, digits=1), "", None))
        early = sum(r.early for r in results)
        earliest = max(r.earliest_ms for r in results)
        goal = "0" if variant == "observable" else ""
        rows.append(
            Row(
                f"3b. countdowns started early, {variant}",
                f"{early} of {sum(r.samples for r in results)}" + (f" (by up to {earliest:.0f} ms)" if early else ""),
                goal,
                early == 0 if goal else None,
            )
        )
    out["countdown"] = section


def bench_sweep(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.domain import sweep_at_scale

    section = []
    for total in _ints(args.promos):
        run = sweep_at_scale(total, repeats=3, due_percent=args.due_percent)
        timing = Summary.of([s * 1000 for s in run.seconds])
        fan_out = Summary.of([s * 1000 for s in run.fan_out_seconds])
        section.append({**asdict(run), "ms": timing.to_json(), "fan_out_ms": fan_out.to_json()})
        print(f"  {total:,} promos: {timing.median:.1f} ms, statements {run.statements}", flush=True)
        rows.append(
            Row(
                f"4. sweep {total:,} promos ({run.due:,} due)",
                f"{fmt(timing, ' ms', 1)}, {max(run.statements)} statements",
                "statements constant; < 1 s",
                timing.median < 1000,
            )
        )
        rows.append(
            Row(
                f"4. then fan-out of {run.notifications_queued:,} notifications, one process",
                fmt(fan_out, " ms", 1),
                "",
                None,
            )
        )
    counts = {max(s["statements"]) for s in section}
    out["sweep"] = section
    rows.append(
        Row(
            "4. sweep SQL statements (with BEGIN/COMMIT)",
            ", ".join(map(str, sorted(counts))),
            "constant",
            len(counts) < 2,
        )
    )


def bench_notifications(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.domain import notification_delivery

    run = notification_delivery(args.notifications, sink)
    out["notifications"] = asdict(run)
    once = run.sent == run.notifications and run.max_attempts == 1 and run.not_sent == 0
    rows.append(
        Row(
            f"5. deliveries/s ({run.notifications:,}, {run.batches} batches)",
            f"{run.per_second:,.0f}/s in {run.seconds:.1f} s",
            ">= 2,000/s",
            run.per_second >= 2000,
        )
    )
    rows.append(
        Row("5. none sent twice", f"sent {run.sent:,}, max attempts {run.max_attempts}", "all sent, attempts 1", once)
    )


def bench_fanout(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.fanout import fan_out_at_scale

    run = fan_out_at_scale(args.fanout_subscribers, sink, args.fanout_batch_size)
    out["fanout"] = asdict(run)
    label = f"{run.subscribers:,} subscribers, batches of {run.batch_size:,}"
    rows += [
        Row(f"6. fan-out {label}: first delivery after activation", f"{run.first_delivery_seconds:.2f} s", "<= 1 s",
            run.first_delivery_seconds <= 1),
        Row(f"6. fan-out longest batch transaction (promo row lock inside it; {run.batches_sampled:,} seen)",
            f"{run.longest_batch_ms:,.0f} ms", "", None),
        Row("6. fan-out walk finished / last delivery, after activation",
            f"{run.walk_seconds:.1f} s / {run.last_delivery_seconds:.1f} s", "", None),
        Row("6. fan-out deliveries/s, first to last (2 processes, fan-out included)",
            f"{run.deliveries_per_second:,.0f}/s ({run.overall_per_second:,.0f}/s from activation)", ">= 5,000/s",
            run.deliveries_per_second >= 5000),
        Row("6. fan-out none sent twice", f"sent {run.sent:,}, max attempts {run.max_attempts}",
            "all sent, attempts 1", run.sent == run.subscribers and run.max_attempts == 1),
    ]  # fmt: skip


def bench_lag(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.domain import activation_lag

    run = activation_lag(args.lag_promos, args.lag_spread, sink)
    out["activation_lag"] = asdict(run)
    rows.append(
        Row(
            f"6. activation lag ({run.activated}/{run.promos} promos over {run.spread_seconds:.0f} s)",
            f"p50 {run.p50_ms:.0f} ms, p99 {run.p99_ms:.0f} ms, max {run.max_ms:.0f} ms",
            "p99 <= 1 s",
            run.p99_ms <= 1000,
        )
    )


def bench_dead_letters(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.domain import dead_letters

    run = dead_letters(args.dead_letters, 200, args.replay, args.replay_rate, args.rate_count)
    record = Summary.of(run.record_ms)
    listing = Summary.of(run.list_ms)
    out["dead_letters"] = {**asdict(run), "record": record.to_json(), "list": listing.to_json()}
    accuracy = run.rate_measured / run.rate_asked
    rows += [
        Row("7. dead_letter_record per entry", fmt(record, " ms", 2), "", None),
        Row(f"7. dlq list --task --reason on {run.entries:,}", fmt(listing, " ms", 1), "<= 200 ms",
            listing.median <= 200),
        Row(f"7. replay unthrottled ({run.replay_entries:,})", f"{run.replay_per_second:,.0f}/s", ">= 1,000/s",
            run.replay_per_second >= 1000),
        Row(f"7. replay --rate {run.rate_asked:.0f} ({run.rate_entries:,})", f"{run.rate_measured:,.1f}/s "
            f"({accuracy:.3f}x)", "within 5%", abs(accuracy - 1) <= 0.05),
    ]  # fmt: skip


def bench_memory(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.throughput import memory_run

    stages = _ints(args.memory)
    run = memory_run(sink, stages)
    out["memory"] = asdict(run)
    means = [statistics.mean(r) if r else 0.0 for r in run.child_rss_kib]
    growth = means[-1] / means[0] - 1 if means[0] else float("nan")
    rows.append(
        Row(
            f"8. child RSS after {', '.join(f'{s:,}' for s in stages)} tasks",
            " -> ".join(f"{m / 1024:.1f} MiB" for m in means) + f" ({growth:+.1%})",
            "growth <= 10%",
            growth <= 0.10,
        )
    )


def bench_flood(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.flood import bench

    bench(args, sink, rows, out)


def bench_ratelimit(args: argparse.Namespace, sink: Sink, rows: list[Row], out: dict[str, Any]) -> None:
    from bench.ratelimit import bench_ratelimit as run

    run(args, sink, rows, out)


BENCHMARKS: dict[str, Callable[[argparse.Namespace, Sink, list[Row], dict[str, Any]], None]] = {
    "child_path": bench_child_path,
    "throughput": bench_throughput,
    "publish": bench_publish,
    "latency": bench_latency,
    "countdown": bench_countdown,
    "sweep": bench_sweep,
    "notifications": bench_notifications,
    "fanout": bench_fanout,
    "lag": bench_lag,
    "dead_letters": bench_dead_letters,
    "memory": bench_memory,
    "flood": bench_flood,
    "ratelimit": bench_ratelimit,
}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if RABBITMQ and (others := set(args.only.split(",")) - set(RABBITMQ_SECTIONS)):
        raise SystemExit(
            f"bench.run: with BENCH_BROKER_URL on RabbitMQ only {', '.join(RABBITMQ_SECTIONS)} run; "
            f"drop {', '.join(sorted(others))} from --only"
        )
    setup_django()
    sink = Sink()
    rows: list[Row] = []
    out: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "arguments": {k: str(v) for k, v in vars(args).items()},
    }
    started, ticks = time.perf_counter(), cpu_ticks()
    try:
        for name in args.only.split(","):
            print(f"== {name}", flush=True)
            section_started = time.perf_counter()
            try:
                BENCHMARKS[name](args, sink, rows, out)
            except (RuntimeError, TimeoutError) as exc:  # report what failed; the other sections still run
                rows.append(Row(f"{name}: not measured", str(exc).splitlines()[0][:80], "", False))
                out.setdefault("errors", {})[name] = str(exc)
            out.setdefault("section_seconds", {})[name] = round(time.perf_counter() - section_started, 1)
    finally:
        sink.stop()
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    out["machine"]["steal_percent"] = steal_percent(ticks, cpu_ticks())
    out["table"] = [asdict(r) | {"verdict": r.verdict} for r in rows]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, default=str))  # before rendering: the figures come first
    table = render(rows)
    out["table_markdown"] = table
    args.output.write_text(json.dumps(out, indent=2, default=str))
    print()
    machine_ = out["machine"]
    print(
        f"machine: {machine_['nproc']} cores, {machine_['cpu']}; {out['total_seconds']} s; "
        f"CPU stolen by the hypervisor: {machine_['steal_percent']}%"
    )
    print(table)
    print(f"\nJSON: {args.output}")


if __name__ == "__main__":
    main()
