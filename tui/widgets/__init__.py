"""The console's widgets, one per module."""

from tui.widgets.action_line import ActionLine
from tui.widgets.connection_bar import ConnectionBar
from tui.widgets.job_events import JobEventsTable
from tui.widgets.job_summary import JobSummary
from tui.widgets.jobs_table import JobsTable
from tui.widgets.queue_panel import QueuePanel
from tui.widgets.throughput_panel import ThroughputPanel
from tui.widgets.webhook_log import WebhookLogTable
from tui.widgets.workers_table import WorkersTable

__all__ = ["ActionLine", "ConnectionBar", "JobEventsTable", "JobSummary", "JobsTable", "QueuePanel",
           "ThroughputPanel", "WebhookLogTable", "WorkersTable"]
