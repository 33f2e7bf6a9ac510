"""s2s-tui, the on-call console for s2s.

``tui.model`` and ``tui.client`` (plain data and the REST client) import without Textual;
only ``tui.app``, ``tui.screens`` and ``tui.widgets`` need it.
"""
