"""The line at the top that always says whether the numbers below can be trusted."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui.client import ConnectionState, ConnectionStatus
from tui.model import format_age

_MARKS = {ConnectionState.CONNECTING: "◌", ConnectionState.CONNECTED: "●", ConnectionState.RECONNECTING: "◌",
          ConnectionState.UNAUTHORISED: "✖"}


class ConnectionBar(Widget):
    """Connected, reconnecting (with the next try's countdown) or unauthorised, and the data's age.

    ``now`` is moved on every tick, so the age keeps counting while refreshes fail.
    """

    status: reactive[ConnectionStatus] = reactive(ConnectionStatus)
    now: reactive[float] = reactive(0.0)

    def __init__(self, url: str, *, stale_after: float, id: str | None = None):
        super().__init__(id=id)
        self.url = url
        self.stale_after = stale_after

    def watch_status(self) -> None:
        self._restyle()

    def watch_now(self) -> None:
        self._restyle()

    def _restyle(self) -> None:
        status = self.status
        for state in ConnectionState:
            self.set_class(status.state is state, f"-{state.value}")
        self.set_class(status.state is ConnectionState.CONNECTED and status.is_stale(self.now, self.stale_after),
                       "-stale")

    def render(self) -> Text:
        status, now = self.status, self.now
        line = Text.assemble((f"{_MARKS[status.state]} {status.state.value}", "bold"), "  ", self.url)
        if status.state is ConnectionState.RECONNECTING and status.retry_at is not None:
            wait = max(0.0, status.retry_at - now)
            line.append(f"  · try {status.failures + 1} in {wait:.1f}s")
        age = status.data_age(now)
        if status.state is ConnectionState.UNAUTHORISED:
            line.append("  · only the public queue numbers are live")
        elif status.is_stale(now, self.stale_after):
            line.append("  · STALE: " + ("no data yet" if age is None else f"data {format_age(age)} old"),
                        "bold")
        else:
            line.append(f"  · updated {format_age(age)} ago")
        if status.error and status.state is not ConnectionState.CONNECTED:
            line.append("\n" + status.error)
        return line
