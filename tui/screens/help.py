"""Every key the console answers to, in one place."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, keys: list[tuple[str, str]]):
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 3))
        table.add_column(style="bold", justify="right")
        table.add_column()
        for key, meaning in self.keys:
            table.add_row(key, meaning)
        with Vertical(id="help-dialog"):
            yield Static("Keys", id="help-title")
            yield Static(table, id="help-keys")
            yield Static("Actions that change the queue ask first: y confirms, n or Esc cancels.", id="help-note")
