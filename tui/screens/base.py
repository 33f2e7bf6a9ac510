"""What every full screen of the console shows: the connection's state and the last action's outcome."""

from __future__ import annotations

from textual.reactive import reactive
from textual.screen import Screen

from tui.client import ConnectionStatus
from tui.model import ActionOutcome


class ConsoleScreen(Screen[None]):
    """The App sets these on every open screen; the screen's widgets are data-bound to them, so a
    value set before the screen is mounted is shown as soon as it is."""

    connection: reactive[ConnectionStatus] = reactive(ConnectionStatus)
    now: reactive[float] = reactive(0.0)
    outcome: reactive[ActionOutcome | None] = reactive(None)
