"""A job's kept event history, oldest first, as the WebSocket sent it."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable

from tui.model import JobEvent


class JobEventsTable(DataTable):
    events: reactive[tuple[JobEvent, ...]] = reactive(tuple)

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.add_columns("seq", "event", "status", "progress", "message / error")

    def watch_events(self, events: tuple[JobEvent, ...]) -> None:
        at_end = self.cursor_row >= self.row_count - 1
        self.clear()
        self.border_title = f"events ({len(events)})"
        for event in events:
            style = "red" if event.type == "job_failed" else ""
            self.add_row(str(event.seq), event.type, event.status, "" if event.progress is None else
                         f"{event.progress}%", Text(event.text, style=style), key=str(event.seq))
        if at_end and events:
            self.move_cursor(row=len(events) - 1)  # follow new events unless the operator scrolled up
