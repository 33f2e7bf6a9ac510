"""Recent and running jobs, one row each, with the selection the operator's actions apply to."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from tui.model import Clock, JobInfo, format_age, progress_text, short_id

FILTERS = ("all", "active", "waiting", "delayed", "failed", "completed", "cancelled")
_STATUS_STYLES = {"processing": "bold yellow", "completed": "green", "failed": "bold red", "cancelled": "dim",
                  "delayed": "magenta"}
NOTE_WIDTH = 56


class JobsTable(DataTable):
    """Rebuilt on each refresh; the cursor stays on the same job, wherever its row moved."""

    BINDINGS = [Binding("enter", "select_cursor", "Details")]  # DataTable's own key, named in the footer

    jobs: reactive[tuple[JobInfo, ...] | None] = reactive(None)
    state_filter: reactive[str] = reactive("all")

    def __init__(self, clock: Clock, *, id: str | None = None):
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.clock = clock
        self._by_id: dict[str, JobInfo] = {}
        self.add_columns("job", "hero", "status", "progress", "tries", "age", "provider", "error / message")

    @property
    def visible_jobs(self) -> list[JobInfo]:
        jobs = self.jobs or ()
        return [job for job in jobs if self.state_filter == "all" or job.state == self.state_filter]

    @property
    def selected(self) -> JobInfo | None:
        """The job under the cursor, if the table has any rows."""
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None
        return self._by_id.get(key)

    def select_job(self, job_id: str) -> bool:
        try:
            self.move_cursor(row=self.get_row_index(job_id))
        except RowDoesNotExist:
            return False
        return True

    def cycle_filter(self) -> None:
        """all, then one state after another: the operator's way to find the failed ones among many."""
        self.state_filter = FILTERS[(FILTERS.index(self.state_filter) + 1) % len(FILTERS)]

    def watch_jobs(self) -> None:
        self._rebuild()

    def watch_state_filter(self) -> None:
        self._rebuild()

    def _rebuild(self) -> None:
        selected = self.selected
        self.clear()
        visible = self.visible_jobs
        self._by_id = {job.job_id: job for job in visible}
        total = "" if self.jobs is None else f" ({len(visible)})"
        self.border_title = f"jobs: {self.state_filter}{total}"
        now = self.clock()
        for job in visible:
            shown_status = "delayed" if job.state == "delayed" else job.status
            note = job.note()
            note = note if len(note) <= NOTE_WIDTH else note[:NOTE_WIDTH - 1] + "…"
            age = None if job.created_at is None else now - job.created_at
            self.add_row(short_id(job.job_id), job.hero_name, Text(shown_status, style=_STATUS_STYLES.get(
                shown_status, "")), progress_text(job.progress), f"{job.attempts}/{job.max_attempts}",
                format_age(age), job.provider or "-", Text(note, style="red" if job.error else ""),
                key=job.job_id)
        if selected is not None:
            self.select_job(selected.job_id)
