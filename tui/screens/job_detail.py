"""One job up close: its record, a progress bar, and its event history, refreshed while open."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, ProgressBar

from tui.client import ApiError, ConsoleSource
from tui.model import Clock, JobInfo
from tui.screens.base import ConsoleScreen
from tui.widgets import ActionLine, ConnectionBar, JobEventsTable, JobSummary, WebhookLogTable


class JobDetailScreen(ConsoleScreen):
    """Not modal, so the App's keys (cancel, retry, pause...) act on this job from here too."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"),
                Binding("w", "app.redeliver_webhooks", "Redeliver", show=False,
                        tooltip="send the job's ended webhook deliveries again")]
    AUTO_FOCUS = "JobEventsTable"

    def __init__(self, job_id: str, source: ConsoleSource, *, clock: Clock, interval: float, stale_after: float):
        super().__init__()
        self.job_id = job_id
        self.source = source
        self.clock = clock
        self.interval = interval
        self.stale_after = stale_after

    @property
    def job(self) -> JobInfo | None:
        return self.query_one(JobSummary).job

    def compose(self) -> ComposeResult:
        yield ConnectionBar(self.source.url, stale_after=self.stale_after).data_bind(
            status=JobDetailScreen.connection, now=JobDetailScreen.now)
        yield JobSummary(self.clock, id="job-summary")
        yield ProgressBar(total=100, show_eta=False, id="job-progress")
        yield JobEventsTable(id="job-events")
        yield WebhookLogTable(self.clock, id="job-webhooks")
        yield ActionLine().data_bind(JobDetailScreen.outcome)
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.interval, self.load)
        self.load()

    @work(exclusive=True, group="job-detail")
    async def load(self) -> None:
        # The widgets are found before the wait: closing the screen removes them while the request is out,
        # and an answer for a closed screen only updates widgets nobody sees.
        summary, bar = self.query_one(JobSummary), self.query_one(ProgressBar)
        events, webhooks = self.query_one(JobEventsTable), self.query_one(WebhookLogTable)
        try:
            detail = await self.source.job_detail(self.job_id)
        except ApiError as exc:
            summary.problem = exc.sentence
            summary.refresh()
            return
        summary.problem = ""
        summary.job = detail.job
        summary.refresh()  # the ages move on even when the job did not
        bar.update(progress=detail.job.progress)
        events.events = detail.events
        webhooks.attempts = detail.webhooks
