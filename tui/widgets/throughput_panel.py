"""Completed and failed jobs per second over the last minutes, as sparklines."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Label, Sparkline

from tui.model import ThroughputView, format_age, format_rate


def _summary(now: float | None, average: float | None, seconds: float) -> str:
    return f"{format_rate(now)} now, {format_rate(average)} over {format_age(seconds)}"


class ThroughputPanel(Widget):
    """Rates come from successive ``totals`` counters (see :class:`tui.model.Throughput`)."""

    view: reactive[ThroughputView] = reactive(ThroughputView)

    def compose(self) -> ComposeResult:
        yield Label("completed/s", id="completed-label")
        yield Sparkline((), id="completed-rate")
        yield Label("failed/s", id="failed-label")
        yield Sparkline((), id="failed-rate")

    def watch_view(self, view: ThroughputView) -> None:
        minutes = round(view.window_seconds / 60)
        self.border_title = f"throughput, last {minutes} min"
        self.query_one("#completed-label", Label).update(
            "completed " + _summary(view.completed_now, view.completed_avg, view.average_seconds))
        self.query_one("#failed-label", Label).update(
            "failed    " + _summary(view.failed_now, view.failed_avg, view.average_seconds))
        self.query_one("#completed-rate", Sparkline).data = list(view.completed)
        self.query_one("#failed-rate", Sparkline).data = list(view.failed)
