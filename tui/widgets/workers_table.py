"""Every worker process the API knows of, the dead ones marked."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import DataTable

from tui.model import Clock, WorkerInfo, format_age


class WorkersTable(DataTable):
    """One row per worker: where it runs, how much it can take, how much it holds, when it last beat."""

    worker_infos: reactive[tuple[WorkerInfo, ...] | None] = reactive(None)

    def __init__(self, clock: Clock, *, id: str | None = None):
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.clock = clock
        self.add_columns("worker", "host", "pid", "conc.", "jobs", "provider", "heartbeat", "state")

    def watch_worker_infos(self, workers: tuple[WorkerInfo, ...] | None) -> None:
        self.clear()
        if workers is None:
            self.border_title = "workers"
            return
        now = self.clock()
        alive = sum(w.alive for w in workers)
        self.border_title = f"workers: {alive} alive" + (f", {len(workers) - alive} dead" if alive < len(workers)
                                                         else "")
        for worker in sorted(workers, key=lambda w: (not w.alive, w.host, w.pid)):
            state = Text(worker.state or "alive", style="green") if worker.alive else Text("DEAD", style="bold red")
            self.add_row(worker.id, worker.host, str(worker.pid), str(worker.concurrency), str(worker.jobs),
                         worker.provider, format_age(now - worker.seen_at) + " ago", state, key=worker.id)
