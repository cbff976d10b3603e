"""A report's files: the CSV streamed to storage row by row, and the revenue chart drawn with matplotlib."""

from __future__ import annotations

import csv
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from core.formats import count
from reports.models import Report

if TYPE_CHECKING:
    from reports.services.figures import Figures

CENT = Decimal("0.01")


def save_csv(name: str, figures: Figures, products: dict[int, Any]) -> str:
    """Write rows to a temporary file one at a time, then hand the file to storage, which copies it in chunks."""
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["date", "sku", "product", "quantity", "revenue"])
        for (day, product_id), (quantity, revenue) in sorted(
            figures.lines.items(), key=lambda item: (item[0][0], products[item[0][1]].sku)
        ):
            product = products[product_id]
            writer.writerow([day, product.sku, product.name, quantity, revenue.quantize(CENT)])
        handle.seek(0)
        return default_storage.save(name, File(handle))


def load_chart_library() -> None:
    """Import matplotlib (and numpy under it) for save_chart: about 0.5 s, the most of a small report's finish.

    Imported here rather than at the top so that web processes and workers that never
    draw a chart do not carry it (about 40 MB); reports.tasks has a worker that takes
    reports load it as it starts, once, before its pool forks.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display in a worker
    import matplotlib.dates
    import matplotlib.pyplot
    import matplotlib.ticker


def save_chart(name: str, figures: Figures, report: Report) -> str:
    load_chart_library()
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    days, revenue = zip(*figures.daily_revenue(report.period_start, report.period_end), strict=True)
    figure, axes = plt.subplots(figsize=(9, 3.4), dpi=100)
    try:
        axes.bar(days, [float(value) for value in revenue], color="#2456c7", width=0.8)
        axes.set_title(f"Revenue per day, {report.period_start} to {report.period_end}")
        axes.set_ylabel(f"Revenue ({settings.SHOP_CURRENCY})")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _position: count(round(value))))
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(mdates.AutoDateLocator()))
        axes.spines[["top", "right"]].set_visible(False)
        figure.tight_layout()
        with tempfile.TemporaryFile() as handle:
            figure.savefig(handle, format="png")
            handle.seek(0)
            return default_storage.save(name, File(handle))
    finally:
        plt.close(figure)


def file_path(name: str) -> str:
    """Where a stored file is, for people (a path on local storage, otherwise its storage name)."""
    try:
        return str(Path(default_storage.path(name)))
    except NotImplementedError:
        return name
