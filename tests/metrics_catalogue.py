"""``docs/metrics.md`` read as data: the Prometheus names (with type and labels) that the dashboards, the alert
rules and the end-to-end test may use, and the series the recording rules make. One parser, so the three agree
on what the catalogue says."""

from __future__ import annotations

from dataclasses import dataclass

from tests.conftest import ROOT

METRICS_DOC = ROOT / "docs" / "metrics.md"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Entry:
    kind: str  # counter, gauge or histogram
    #: Labels besides job and instance.
    labels: frozenset[str]
    #: Brokers that make it ("Redis only" in its meaning: none on RabbitMQ).
    brokers: frozenset[str] = frozenset({"redis", "rabbitmq"})


def _rows(column: str) -> list[dict[str, str]]:
    """The rows of every table of docs/metrics.md that has ``column``."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in METRICS_DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if column in cells:
            header = cells
        elif header is not None and not set(line) <= set("|- "):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _labels(cell: str) -> frozenset[str]:
    return frozenset(label.strip() for label in cell.split(",") if label.strip() not in {"-", ""})


def catalogue(broker: str | None = None) -> dict[str, Entry]:
    """Prometheus name -> entry, from every table of docs/metrics.md that has a "Prometheus name" column; with
    ``broker``, only the series made on that broker."""
    entries = {
        row["Prometheus name"].strip("`"): Entry(
            row["Type"], _labels(row["Labels"]),
            frozenset({"redis"}) if "Redis only" in row["Meaning"] else Entry.brokers,
        )
        for row in _rows("Prometheus name")
    }  # fmt: skip
    return {name: entry for name, entry in entries.items() if broker is None or broker in entry.brokers}


def recorded() -> dict[str, frozenset[str]]:
    """Recorded name -> its labels, from the "Recorded series" table (what Prometheus' recording rules make)."""
    return {row["Recorded name"].strip("`"): _labels(row["Labels"]) for row in _rows("Recorded name")}


def readable_names(entries: dict[str, Entry]) -> set[str]:
    """The series names a query may select: a histogram is read through its _bucket, _sum and _count."""
    names: set[str] = set()
    for name, entry in entries.items():
        names |= {name + suffix for suffix in HISTOGRAM_SERIES} if entry.kind == "histogram" else {name}
    return names
