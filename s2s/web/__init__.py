"""The Tornado side of s2s: REST handlers (and, later, the WebSocket)."""
