"""A job's webhook deliveries, one row per attempt (shown only when the job has any)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable

from tui.model import Clock, WebhookAttempt, format_age

_STYLE = {"delivered": "green", "retry": "yellow", "failed": "red", "disabled": "red", "skipped": "red"}


class WebhookLogTable(DataTable):
    attempts: reactive[tuple[WebhookAttempt, ...]] = reactive(tuple)

    def __init__(self, clock: Clock, *, id: str | None = None):
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.clock = clock
        self.display = False
        self.add_columns("event", "try", "when", "outcome", "status", "error", "webhook-id")

    def watch_attempts(self, attempts: tuple[WebhookAttempt, ...]) -> None:
        self.display = bool(attempts)
        self.clear()
        states = {a.webhook_id: a.state for a in attempts}
        self.border_title = "webhooks (w: redeliver) " + ", ".join(sorted(set(states.values())))
        for i, a in enumerate(attempts):
            when = "" if a.at is None else format_age(self.clock() - a.at) + " ago"
            self.add_row(a.event, "" if a.attempt is None else str(a.attempt), when,
                         Text(a.outcome, style=_STYLE.get(a.outcome, "")), "" if a.status is None else str(a.status),
                         a.error, a.webhook_id, key=str(i))
