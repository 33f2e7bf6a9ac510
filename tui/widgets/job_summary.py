"""A job's record in full: who, what state, how many tries, where, when, and why it failed."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui.model import Clock, JobInfo, format_age


def _ago(now: float, at: float | None) -> str:
    return "-" if at is None else format_age(now - at) + " ago"


class JobSummary(Widget):
    job: reactive[JobInfo | None] = reactive(None)
    problem: reactive[str] = reactive("")  # why the last load failed; the last good data stays shown

    def __init__(self, clock: Clock, *, id: str | None = None):
        super().__init__(id=id)
        self.clock = clock

    def render(self) -> Table | Text:
        job = self.job
        if job is None:
            return Text(self.problem or "loading…", style="red" if self.problem else "dim")
        now = self.clock()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("job", job.job_id)
        grid.add_row("hero", job.hero_name or "-")
        grid.add_row("status", Text(job.status, style={"failed": "bold red", "completed": "green"}.get(job.status, "")))
        grid.add_row("tries", f"{job.attempts} of {job.max_attempts}")
        grid.add_row("provider", job.provider or "-")
        # each one a paid picture: more than one for a completed job means it was bought again
        grid.add_row("upstream calls", Text(str(job.upstream_calls),
                                            style="bold yellow" if job.upstream_calls > 1 else ""))
        grid.add_row("created", _ago(now, job.created_at))
        grid.add_row("started", _ago(now, job.started_at))
        grid.add_row("ended", _ago(now, job.ended_at))
        grid.add_row("message", job.message or "-")
        if job.error:
            grid.add_row("error", Text(job.error, style="red"))
        if self.problem:
            grid.add_row("refresh", Text(self.problem, style="red"))
        return grid
