"""The outcome of the operator's last action, in the API's own words when it refused."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui.model import ActionOutcome


class ActionLine(Widget):
    outcome: reactive[ActionOutcome | None] = reactive(None)

    def watch_outcome(self, outcome: ActionOutcome | None) -> None:
        self.set_class(outcome is not None and not outcome.ok, "-error")

    def render(self) -> Text:
        if self.outcome is None:
            return Text("press ? for the keys; every action asks before it acts", style="dim")
        return Text(("✔ " if self.outcome.ok else "✖ ") + self.outcome.text)
