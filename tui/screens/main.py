"""The console's home: connection, queue, throughput, workers and jobs on one screen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import Footer

from s2s.models import StatsSnapshot
from tui.model import Clock, JobInfo, ThroughputView, WorkerInfo
from tui.screens.base import ConsoleScreen
from tui.widgets import ActionLine, ConnectionBar, JobsTable, QueuePanel, ThroughputPanel, WorkersTable


class MainScreen(ConsoleScreen):
    """Only shows what the App hands it; the App owns the data source and the refresh loop."""

    AUTO_FOCUS = "#jobs"

    stats: reactive[StatsSnapshot | None] = reactive(None)
    throughput: reactive[ThroughputView] = reactive(ThroughputView)
    worker_infos: reactive[tuple[WorkerInfo, ...] | None] = reactive(None)
    jobs: reactive[tuple[JobInfo, ...] | None] = reactive(None)

    def __init__(self, url: str, *, clock: Clock, stale_after: float):
        super().__init__(id="main")
        self.url = url
        self.clock = clock
        self.stale_after = stale_after

    @property
    def selected_job(self) -> JobInfo | None:
        return self.query_one(JobsTable).selected

    def compose(self) -> ComposeResult:
        yield ConnectionBar(self.url, stale_after=self.stale_after, id="connection").data_bind(
            status=MainScreen.connection, now=MainScreen.now)
        with Horizontal(id="overview"):
            yield QueuePanel(id="queue").data_bind(MainScreen.stats)
            yield ThroughputPanel(id="throughput").data_bind(view=MainScreen.throughput)
        yield WorkersTable(self.clock, id="workers").data_bind(MainScreen.worker_infos)
        yield JobsTable(self.clock, id="jobs").data_bind(MainScreen.jobs)
        yield ActionLine(id="outcome").data_bind(MainScreen.outcome)
        yield Footer()
