"""The figures of `benchmarks.watchers`: client reports merged per watcher kind, and markdown."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks.histogram import Histogram

SUMMED = (
    "watchers",
    "exact",
    "received",
    "missing",
    "extra",
    "same_count_other_sequence",
    "out_of_order",
    "timed_watchers",
)


def merge_kind(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One kind's client process reports as one (None when the kind had no watchers)."""
    if not reports:
        return None
    merged: dict[str, Any] = {name: sum(r[name] for r in reports) for name in SUMMED}
    ended: Counter[str] = Counter()
    latency = Histogram()
    for report in reports:
        ended.update(report["ended"])
        latency.merge(report["latency"])
    merged["ended"] = dict(ended)
    merged["latency"] = latency.summary()
    merged["last_received"] = max(r["last_received"] for r in reports)
    return merged


def _mb(kib: int | None) -> str:
    return f"{kib / 1024:.1f}" if kib else "-"


def _cost_lines(figures: dict[str, Any]) -> list[str]:
    without, with_, after = (figures.get(k, {}) for k in ("cost_without", "cost_with", "cost_after"))
    lines = [
        "",
        "| load tool run | req/s without watchers | with watchers | without again | with / without "
        "(mean of both) | p99 ms without / with / without again |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, base in without.items():
        loaded = with_.get(label, {})
        again = after.get(label, {})
        bracket = (base["rps"] + again["rps"]) / 2 if again.get("rps") else base["rps"]
        ratio = f"{loaded['rps'] / bracket:.2f}" if loaded.get("rps") and bracket else "-"
        errors = sum(x.get("errors", 0) for x in (base, loaded, again))
        lines.append(
            f"| {label} | {base['rps']:,} | {loaded.get('rps', 0):,} | {again.get('rps', 0):,} | {ratio} | "
            f"{base.get('p99_ms')} / {loaded.get('p99_ms')} / {again.get('p99_ms')} |"
            + (f" {errors} errors" if errors else "")
        )
    return lines


def _per_delivery(figures: dict[str, Any], cpu_s: dict[str, float]) -> list[str]:
    """CPU of the process serving each kind of watcher per change it delivered (the HTTP worker's
    figure includes the creates it served: see --cost for what they cost alone)."""
    lines = []
    watchers = figures.get("watchers", {})
    serving = {"sse": [n for n in cpu_s if n.startswith("http-worker")], "grpc": ["grpc"]}
    for kind, names in serving.items():
        report = watchers.get(kind)
        if report and report["received"]:
            used = sum(cpu_s.get(name, 0.0) for name in names)
            per = used / report["received"] * 1e6
            lines.append(
                f"{kind}: {'+'.join(names)} {used:.2f} CPU s for {report['received']:,} deliveries: {per:.1f} us each"
            )
    return ["", *lines] if lines else []


def markdown(figures: dict[str, Any]) -> str:
    settings = figures["settings"]
    stream = figures.get("stream", {})
    lines = [
        f"{settings['sse']} SSE + {settings['grpc']} gRPC watchers, "
        + ("--cost" if settings["cost"] else f"{settings['rate']:g} creates/s for {settings['duration']:g} s")
        + f"; started {figures['started']}, load average before {' / '.join(figures['loadavg_before'])}",
        f"stream entries after the gate: {stream.get('count')} {stream.get('events')}; pipeline drained "
        f"{figures.get('drained_after_s')} s after the load",
        "",
        "| watchers | count | changes each | received all, once, in order | missing | extra | ended early "
        "| timed | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for kind, report in figures.get("watchers", {}).items():
        if report is None:
            continue
        latency = report["latency"]
        ended = ", ".join(f"{n} {why}" for why, n in report["ended"].items()) or "0"
        lines.append(
            f"| {kind} | {report['watchers']} | {stream.get('count')} | {report['exact']} | {report['missing']:,} | "
            f"{report['extra']:,} | {ended} | {report['timed_watchers']} | {latency['p50_ms']} | "
            f"{latency['p90_ms']} | {latency['p99_ms']} | {latency['max_ms']} |"
        )
    creates = figures.get("creates")
    if creates:
        due, sent = creates["latency_from_due"], creates["latency_from_send"]
        lines += [
            "",
            f"creates: target {creates['target_rps']:g}/s, achieved {creates['achieved_rps']:,}/s "
            f"({creates['ok']} ok of {creates['scheduled']}, errors {creates['errors'] or 0}, "
            f"{creates['connections']} connections, driver {creates['cores_busy']} cores); latency from due time "
            f"p50 {due['p50_ms']} p99 {due['p99_ms']} max {due['max_ms']} ms; from send p50 {sent['p50_ms']} "
            f"p99 {sent['p99_ms']} ms",
        ]
        tails = [r["last_received"] for r in figures.get("watchers", {}).values() if r and r["last_received"]]
        if tails:
            lines.append(
                f"last change received {max(tails) - creates['finished_at']:.2f} s after the last create answered"
            )
    if figures.get("cost_without"):
        lines += _cost_lines(figures)
    rss = [figures.get(k, {}) for k in ("rss_idle_kib", "rss_attached_kib", "rss_end_kib", "rss_peak_kib")]
    cpu = figures.get("cpu", {})
    cores = cpu.get("cores", {})
    lines += [
        "",
        "| process | RSS MB before the watchers | watchers attached | end of the load | max | cores busy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(set().union(*rss, cores)):
        sizes = " | ".join(_mb(sample.get(name)) for sample in rss)
        lines.append(f"| {name} | {sizes} | {cores.get(name, '-')} |")
    if not figures["settings"]["cost"]:  # with --cost, the window holds the load tool's requests
        lines += _per_delivery(figures, cpu.get("cpu_s", {}))
    return "\n".join(lines)
