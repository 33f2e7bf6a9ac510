"""Building the Tornado application and serving it."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import tornado.web
from tornado.ioloop import IOLoop

from s2s import logs
from s2s.actors import LiveActors
from s2s.catalog import Catalog
from s2s.queue import Queue
from s2s.settings import Settings
from s2s.web import handlers as h
from s2s.web import submit
from s2s.web.delete import JobDeleteHandler
from s2s.web.demo import browser_routes
from s2s.web.draining import DrainingHTTPServer
from s2s.web.guards import GuardedHTTPServer
from s2s.web.metrics import MetricsHandler, ProcessMetrics
from s2s.web.openapi import openapi_route
from s2s.web.operator import operator_routes
from s2s.web.stream import JobStreamHandler
from s2s.web.webhooks import webhook_routes
from s2s.web.ws import JobSocket, WsContext

log = logging.getLogger("s2s.api")

DRAIN_S = 5.0  # on SIGTERM, how long requests in flight and closing sockets get before the process goes


def make_app(ctx: h.AppContext, live: WsContext | None = None,
             metrics: ProcessMetrics | None = None) -> tornado.web.Application:
    """The API; with ``live`` (the running actors) also the /ws socket, with ``metrics`` its share of /metrics."""
    route = r"/api/jobs/" + h.JOB_ID
    sockets = [(r"/ws", JobSocket, {"live": live})] if live is not None else []
    routes = [
        *sockets,
        (r"/api/jobs/generate-image", submit.GenerateImageHandler, {"ctx": ctx}),
        (r"/api/jobs/stats", h.StatsHandler, {"ctx": ctx}),
        (r"/api/jobs/health", h.HealthHandler, {"ctx": ctx}),
        (route + r"/status", h.JobStatusHandler, {"ctx": ctx}),
        (route + r"/image", h.JobImageHandler, {"ctx": ctx}),
        (route + r"/stream", JobStreamHandler, {"ctx": ctx, "live": live}),  # answers 503 without the actors
        (route + r"/cancel", h.CancelHandler, {"ctx": ctx}),
        (route + r"/retry", h.RetryHandler, {"ctx": ctx}),
        (r"/api/queue/pause", h.PauseHandler, {"ctx": ctx}),
        (r"/api/queue/resume", h.ResumeHandler, {"ctx": ctx}),
        (r"/api/catalog", h.CatalogHandler, {"ctx": ctx}),
        (r"/metrics", MetricsHandler, {"ctx": ctx, "process": metrics}),
        *operator_routes(ctx),
        *webhook_routes(ctx),  # s2s/web/webhooks.py
        (route, JobDeleteHandler, {"ctx": ctx}),  # after every /api/jobs/<name> route, which it would shadow
        *browser_routes(ctx.settings),  # /static/s2s-client.js; the demo page at / with S2S_DEMO
    ]
    return tornado.web.Application(
        [*routes, openapi_route(ctx, routes)],  # described from the handlers of these routes
        default_handler_class=h.NotFoundHandler,
        default_handler_args={"ctx": ctx},
        compress_response=False,
        log_function=logs.log_request,
    )


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the API until ``stop`` is set (by default on SIGTERM/SIGINT), then stop gracefully.

    Stopping: the listener closes (a load balancer sends new clients elsewhere), requests in
    flight finish, WebSockets are closed with 1001 so their clients reconnect elsewhere and
    resubscribe with lastSeq; after ``DRAIN_S`` whatever is left is cut.
    """
    catalog = Catalog.load(settings.config_dir)
    queue = Queue.connect(settings)
    actors = LiveActors.start(settings, IOLoop.current())  # on the loop's thread: the loop they call back into
    live = WsContext(settings=settings, queue=queue, actors=actors)
    server = metrics = None
    try:
        metrics = await ProcessMetrics.start(queue, live)  # this process's sockets and events, for /metrics
        ctx = h.AppContext(settings=settings, queue=queue, catalog=catalog)
        ctx.uploads.warm()  # the decode processes, before the first upload (s2s/web/upload_gate.py)
        app = make_app(ctx, live, metrics)
        server = GuardedHTTPServer(app, settings=settings, max_body_size=settings.max_body_bytes * submit.DRAIN_FACTOR)
        server.listen(settings.port, settings.host)
        gc.freeze()  # start-up's objects (modules, the app, the catalog) live as long as the process: no full
        # collection scans them again (with 10,000 sockets one takes long enough to hold live events back)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        log.info("api listening", extra={"url": f"http://{settings.host}:{settings.port}",
                                         "provider": settings.effective_provider})
        await stop.wait()
    finally:
        if server is not None:
            await _drain(server, live)
        if metrics is not None:
            await metrics.stop()
        await asyncio.get_running_loop().run_in_executor(None, actors.stop)  # joins threads: off the loop
        await queue.close()
        log.info("api stopped")


async def _drain(server: DrainingHTTPServer, live: WsContext) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    server.stop()  # no new connection
    log.info("api draining", extra={"connections": len(server.open_connections), "sockets": len(live.sockets)})
    server.drain()
    live.close_all()  # 1001: clients reconnect (to another process) and resubscribe with lastSeq
    while (server.open_connections or live.sockets) and loop.time() - started < DRAIN_S:
        await asyncio.sleep(0.02)
    if server.open_connections or live.sockets:
        log.warning("api drain time over; cutting the rest",
                    extra={"connections": len(server.open_connections), "sockets": len(live.sockets)})
    await server.close_all_connections()
