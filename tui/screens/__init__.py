"""The console's screens: home, a job's detail, and the two modals (confirm, help)."""

from tui.screens.base import ConsoleScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.help import HelpScreen
from tui.screens.job_detail import JobDetailScreen
from tui.screens.main import MainScreen

__all__ = ["ConfirmScreen", "ConsoleScreen", "HelpScreen", "JobDetailScreen", "MainScreen"]
