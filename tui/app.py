"""s2s-tui: the on-call console. A Textual App over the s2s REST API (never Redis).

The App owns the refresh loop and the operator's actions; screens and widgets only show
what they are handed. The data source is passed in, so tests hand in a fake one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator

from attrs import evolve
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.worker import Worker

from s2s.backoff import Backoff
from tui.client import RECONNECT_BACKOFF, ApiClient, ApiError, ConnectionStatus, ConsoleSource, Unauthorised
from tui.model import ActionOutcome, Clock, JobInfo, Throughput, retried_sentence, short_id
from tui.screens import ConfirmScreen, ConsoleScreen, HelpScreen, JobDetailScreen, MainScreen
from tui.widgets import JobsTable

DEFAULT_URL = "http://localhost:3001"


class ConsoleApp(App[None]):
    """Polls the API every ``refresh_interval`` seconds (backing off while it is away) and acts on keys."""

    CSS_PATH = "app.tcss"
    TITLE = "s2s console"
    ENABLE_COMMAND_PALETTE = False  # every action has a key, listed by ? and in the footer
    BINDINGS = [  # short descriptions fit the footer; the tooltips are what the help screen says
        Binding("p", "pause_queue", "Pause", tooltip="pause the queue: workers take no new jobs"),
        Binding("u", "resume_queue", "Resume", tooltip="resume the queue"),
        Binding("c", "cancel_job", "Cancel", tooltip="cancel the selected job (queued or running)"),
        Binding("r", "retry_job", "Retry", tooltip="retry the selected job (failed or cancelled)"),
        Binding("R", "retry_failed", "Retry failed", key_display="R", tooltip="retry every failed job"),
        Binding("enter", "show_job", "Details", tooltip="the selected job's record and event history"),
        Binding("f", "cycle_filter", "Filter", tooltip="show all jobs, or one state after another"),
        Binding("g", "refresh_now", "Refresh", tooltip="refresh now, without waiting for the backoff"),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="this list"),
        Binding("q", "quit", "Quit", tooltip="leave the console (the queue is not touched)"),
    ]
    HELP_EXTRA = [("↑ ↓", "move the selection"), ("Tab", "switch between the workers and jobs tables"),
                  ("Esc", "back from a job's details")]

    connection: reactive[ConnectionStatus] = reactive(ConnectionStatus)

    def __init__(self, source: ConsoleSource, *, clock: Clock = time.time, refresh_interval: float = 1.0,
                 job_limit: int = 25, backoff: Backoff = RECONNECT_BACKOFF, throughput: Throughput | None = None):
        super().__init__()
        self.source = source
        self.clock = clock
        self.refresh_interval = refresh_interval
        self.stale_after = max(3.0, 3 * refresh_interval)
        self.job_limit = job_limit
        self.backoff = backoff
        self.throughput = throughput or Throughput()
        self.refreshes = 0  # completed refreshes, so tests can wait for "the next one" instead of sleeping
        self._refresh: Worker | None = None
        self.main = MainScreen(source.url, clock=clock, stale_after=self.stale_after)

    def get_default_screen(self) -> MainScreen:
        return self.main

    def on_mount(self) -> None:
        self.set_interval(self.refresh_interval, self.tick)
        self.tick()

    # ---- refreshing ------------------------------------------------------------------------
    def tick(self) -> None:
        """Age what is shown, and start a refresh unless one is running or the backoff says wait."""
        self.age_screens()
        if (self._refresh is None or self._refresh.is_finished) and self.connection.due(self.clock()):
            self._refresh = self.refresh_data()

    @work(exclusive=True, group="refresh")
    async def refresh_data(self) -> None:
        try:
            stats = await self.source.stats()
            self.throughput.add(self.clock(), stats.totals)
            self.main.stats = stats
            self.main.throughput = self.throughput.view()
            workers, jobs = await asyncio.gather(self.source.workers(self.clock()),
                                                 self.source.jobs(self.job_limit))
        except ApiError as exc:
            self.connection = self.connection.failed(self.clock(), exc, self.backoff)
        else:
            self.main.worker_infos = workers
            self.main.jobs = jobs
            self.connection = self.connection.succeeded(self.clock())
        self.refreshes += 1
        self.age_screens()

    def age_screens(self) -> None:
        now = self.clock()
        for screen in self._console_screens():
            screen.now = now

    def watch_connection(self, status: ConnectionStatus) -> None:
        for screen in self._console_screens():
            screen.connection = status

    def _console_screens(self) -> Iterator[ConsoleScreen]:
        """Every open screen that shows the connection (the home screen is updated while hidden)."""
        return (screen for screen in self.screen_stack if isinstance(screen, ConsoleScreen))

    # ---- the operator's actions ------------------------------------------------------------
    def selected_job(self) -> JobInfo | None:
        """The job an action applies to: the one whose details are open, else the selected row."""
        if isinstance(self.screen, JobDetailScreen):
            return self.screen.job
        return self.main.selected_job

    def action_pause_queue(self) -> None:
        self.confirm("Pause the queue? Workers finish the jobs in hand and take no new ones; "
                     "jobs can still be submitted.", "Pause", self._pause)

    def action_resume_queue(self) -> None:
        self.confirm("Resume the queue? Workers start taking jobs again.", "Resume", self._resume)

    def action_cancel_job(self) -> None:
        job = self.selected_job()
        if job is None:
            return self.show_outcome(ActionOutcome("Select a job to cancel first.", ok=False))
        if not job.cancellable:
            return self.show_outcome(ActionOutcome(
                f"Job {short_id(job.job_id)} is {job.status}; only queued or running jobs can be cancelled.", ok=False))
        self.confirm(f"Cancel job {job.job_id} ({job.hero_name or 'no name'}, {job.status})? "
                     "A running job is stopped.", "Cancel job", lambda: self._cancel(job.job_id))

    def action_retry_job(self) -> None:
        job = self.selected_job()
        if job is None:
            return self.show_outcome(ActionOutcome("Select a job to retry first.", ok=False))
        if not job.retryable:
            return self.show_outcome(ActionOutcome(
                f"Job {short_id(job.job_id)} is {job.status}; only failed or cancelled jobs can be retried.",
                ok=False))
        self.confirm(f"Retry job {job.job_id} ({job.hero_name or 'no name'}, {job.status})? "
                     "It is queued again with fresh attempts.", "Retry", lambda: self._retry(job.job_id))

    def action_retry_failed(self) -> None:
        stats = self.main.stats
        count = "every" if stats is None else f"all {stats.failed}"
        self.confirm(f"Retry {count} failed job(s)? Each is queued again with fresh attempts.", "Retry all",
                     self._retry_failed)

    def action_redeliver_webhooks(self) -> None:
        job = self.selected_job()
        if job is None:
            return self.show_outcome(ActionOutcome("Select a job first.", ok=False))
        self.confirm(f"Send the webhooks of job {job.job_id} again? The receiver gets the same webhook-id; a URL "
                     "disabled by a 410 is enabled again.", "Redeliver", lambda: self._redeliver(job.job_id))

    def action_show_job(self) -> None:
        job = self.main.selected_job
        if job is not None and not isinstance(self.screen, JobDetailScreen):
            detail = JobDetailScreen(job.job_id, self.source, clock=self.clock, interval=self.refresh_interval,
                                     stale_after=self.stale_after)
            detail.connection, detail.now, detail.outcome = self.connection, self.clock(), self.main.outcome
            self.push_screen(detail)

    def on_data_table_row_selected(self, event: JobsTable.RowSelected) -> None:
        if isinstance(event.data_table, JobsTable):
            self.action_show_job()

    def action_cycle_filter(self) -> None:
        self.main.query_one(JobsTable).cycle_filter()

    def action_refresh_now(self) -> None:
        """Try again now, whatever the backoff says (the operator knows the API is back)."""
        self.connection = evolve(self.connection, retry_at=None)
        self._refresh = self.refresh_data()

    def action_help(self) -> None:
        keys = [(b.key_display or b.key, b.tooltip or b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        self.push_screen(HelpScreen(keys + self.HELP_EXTRA))

    def confirm(self, question: str, verb: str, act: Callable[[], Awaitable[str]]) -> None:
        """Ask first; only a yes runs ``act``."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.perform(act)

        self.push_screen(ConfirmScreen(question, verb=verb), answered)

    @work(group="actions")
    async def perform(self, act: Callable[[], Awaitable[str]]) -> None:
        try:
            outcome = ActionOutcome(await act())
        except ApiError as exc:
            outcome = ActionOutcome(exc.sentence, ok=False)
            if isinstance(exc, Unauthorised):
                self.connection = self.connection.failed(self.clock(), exc, self.backoff)
        self.show_outcome(outcome)
        self.action_refresh_now()

    def show_outcome(self, outcome: ActionOutcome) -> None:
        for screen in self._console_screens():
            screen.outcome = outcome
        self.notify(outcome.text, severity="information" if outcome.ok else "error")

    async def _pause(self) -> str:
        await self.source.pause()
        return "Queue paused: workers take no new jobs until it is resumed."

    async def _resume(self) -> str:
        await self.source.resume()
        return "Queue resumed: workers take jobs again."

    async def _cancel(self, job_id: str) -> str:
        job = await self.source.cancel(job_id)
        return f"Job {short_id(job_id)} is {job.status}."

    async def _retry(self, job_id: str) -> str:
        job = await self.source.retry(job_id)
        return f"Job {short_id(job_id)} is {job.status} again."

    async def _redeliver(self, job_id: str) -> str:
        count = await self.source.redeliver(job_id)
        return f"Job {short_id(job_id)}: {count} webhook delivery(ies) scheduled again."

    async def _retry_failed(self) -> str:
        return retried_sentence(*await self.source.retry_failed())


# ---- the command line ----------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s2s-tui", description="The s2s on-call console: live queue, workers "
                                     "and jobs, with pause/resume, cancel and retry. Talks to the REST API only.")
    parser.add_argument("--url", default=os.environ.get("S2S_API_URL", DEFAULT_URL),
                        help=f"the s2s API's base URL (default: $S2S_API_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=None,
                        help="the operator token (default: $S2S_ADMIN_TOKEN); prefer the variable, a flag shows in ps")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--jobs", type=int, default=25, help="jobs listed per state (default 25, at most 500)")
    args = parser.parse_args(argv)
    if args.token is None:
        args.token = os.environ.get("S2S_ADMIN_TOKEN") or None
    if not 0.2 <= args.interval <= 60:
        parser.error("--interval must be between 0.2 and 60 seconds")
    if not 1 <= args.jobs <= 500:
        parser.error("--jobs must be between 1 and 500")
    return args


async def run_console(args: argparse.Namespace) -> None:
    """One loop for the App and its HTTP session, so the session closes on the loop that opened it."""
    async with ApiClient(args.url, args.token) as client:
        await ConsoleApp(client, refresh_interval=args.interval, job_limit=args.jobs).run_async()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(run_console(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
