"""The queue's counts, whether it is paused, how long the next job has waited and how long jobs take."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from s2s.models import StatsSnapshot
from tui.model import format_age, format_ms


class QueuePanel(Widget):
    """Straight from GET /api/jobs/stats: nothing here is computed by the console."""

    stats: reactive[StatsSnapshot | None] = reactive(None)

    def watch_stats(self, stats: StatsSnapshot | None) -> None:
        self.set_class(stats is not None and stats.paused, "-paused")
        self.border_title = "queue" if stats is None else f"queue: {'PAUSED' if stats.paused else 'running'}"

    def render(self) -> Group | Table | Text:
        stats = self.stats
        if stats is None:
            return Text("waiting for the first stats…", style="dim")
        grid = Table.grid(padding=(0, 1))
        for _ in range(3):
            grid.add_column()
            grid.add_column(justify="right")
        state = Text(" PAUSED ", style="bold reverse") if stats.paused else Text(" RUNNING ", style="bold")
        grid.add_row(state, "", "", "", "", "")
        grid.add_row("waiting", str(stats.waiting), "active", str(stats.active), "delayed", str(stats.delayed))
        grid.add_row("completed", str(stats.completed), "failed", Text(str(stats.failed),
                     style="bold red" if stats.failed else ""), "cancelled", str(stats.cancelled))
        oldest = None if stats.oldest_waiting_age_ms is None else stats.oldest_waiting_age_ms / 1000
        grid.add_row("oldest wait", format_age(oldest), "p50", format_ms(stats.p50_ms), "p95", format_ms(stats.p95_ms))
        if not stats.duration_sample:
            return grid
        return Group(grid, Text(f"p50/p95: run times of the last {stats.duration_sample} completed jobs",
                                style="dim"))
