"""Composition root: builds every component from the Config, starts them in order, stops them
in reverse, and tells systemd about it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
from aiohttp import web

from sip4ai import __version__
from sip4ai.api import create_app
from sip4ai.config import Config, SipConfig
from sip4ai.conversation import make_conversation_factory
from sip4ai.holdaudio import HoldAudio
from sip4ai.manager import CallManager, ConversationFactory
from sip4ai.metrics import Metrics, WebhookMetrics
from sip4ai.outbox import Outbox, RetryPolicy
from sip4ai.sip.interface import SipEngine
from sip4ai.store import CallStore
from sip4ai.systemd import Notifier
from sip4ai.webhooks import LifecycleWebhooks


logger = logging.getLogger(__name__)

EngineFactory = Callable[[SipConfig], SipEngine]


def default_engine_factory(config: SipConfig) -> SipEngine:
    from sip4ai.sip import create_engine

    return create_engine(config)


class App:
    """One running sip4ai. ``await app.start()``, then ``await app.stop()`` (idempotent)."""

    def __init__(
        self,
        config: Config,
        *,
        engine_factory: EngineFactory | None = default_engine_factory,
        conversation_factory: ConversationFactory | None | Literal["auto"] = "auto",
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.engine: SipEngine | None = (
            engine_factory(config.sip)
            if engine_factory is not None and config.sip.enabled
            else None
        )
        self.metrics = Metrics(engine=self.engine.name if self.engine else "none")
        self.http: aiohttp.ClientSession | None = None
        self.hold_audio: HoldAudio | None = None
        if conversation_factory == "auto":
            conversation_factory = make_conversation_factory(
                config,
                http=lambda: self.http,
                hold_audio=lambda: self.hold_audio,
                metrics=self.metrics,
            )
        self.store = CallStore(config.data_dir / "sip4ai.sqlite3")
        self.manager = CallManager(
            store=self.store,
            metrics=self.metrics,
            engine=self.engine,
            default_provider=config.provider,
            max_calls=config.sip.max_calls,
            conversation_factory=conversation_factory,
            answer_timeout_s=config.sip.answer_timeout_s,
            ai_available=conversation_factory is not None,
        )
        secret = config.webhooks.secret
        self.outbox = Outbox(
            config.data_dir / "webhooks.sqlite3",
            secret=secret.reveal() if secret else None,
            policy=RetryPolicy(
                initial_backoff_s=config.webhooks.initial_backoff_s,
                max_backoff_s=config.webhooks.max_backoff_s,
                max_attempts=config.webhooks.max_attempts,
                max_age_s=config.webhooks.max_age_s,
                attempt_timeout_s=config.webhooks.timeout_s,
            ),
            observer=WebhookMetrics(self.metrics),
        )
        self.webhooks = LifecycleWebhooks(self.outbox, default_url=config.webhooks.event_webhook)
        self.manager.subscribe(self.webhooks.on_call_event)
        result_url = config.outbound.result_webhook
        if result_url:
            hooks = self.webhooks
            self.manager.task_results = lambda rec, res: hooks.task_result(rec, res, result_url)
        self.manager.hangup_on_task_complete = config.outbound.hangup_on_task_complete
        self.notifier = notifier or Notifier()
        self.api_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = False

    @property
    def mode_description(self) -> str:
        if self.engine is None:
            return "API only (no SIP credentials)"
        return f"{self.config.mode} via {self.engine.name}"

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.hold_audio = HoldAudio(self.http, cache_dir=self.config.data_dir / "hold_audio")
        await self.outbox.start()
        await self.store.open()
        await self.manager.start()
        if self.engine is not None:
            self._tasks.append(asyncio.create_task(self.manager.run(), name="sip-events"))
            await self.engine.start()
        if self.config.api_port:
            await self._start_api()
        if self.engine is not None and self.config.mode == "outbound":
            self._tasks.append(asyncio.create_task(self._outbound_task(), name="outbound-task"))
        self._tasks.append(asyncio.create_task(self.notifier.watchdog(), name="watchdog"))
        status = f"{self.mode_description}; api={self.config.api_host}:{self.api_port or 'off'}"
        logger.info("= sip4ai %s started: %s", __version__, status)
        self.notifier.ready(status)

    async def _outbound_task(self) -> None:
        """Outbound mode: once registered, place the configured task call (once)."""
        outbound = self.config.outbound
        assert outbound.target_number is not None  # config validation requires it in this mode
        while not self.manager.sip_registered:
            await self.manager.registration_changed.wait()
        record = await self.manager.create_outbound(
            outbound.target_number,
            task=outbound.task_description,
            caller_id=outbound.caller_id,
            max_duration_seconds=self.config.max_duration_seconds,
        )
        logger.info("> outbound mode: task call %s placed", record.id)

    async def _start_api(self) -> None:
        app = create_app(
            self.manager,
            self.metrics,
            token=self.config.api_token.reveal() if self.config.api_token else None,
            info={
                "mode": self.config.mode,
                "sip_engine": self.engine.name if self.engine else "none",
            },
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.api_host, self.config.api_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.api_port = sockets[0].getsockname()[1] if sockets else self.config.api_port

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        logger.info("x sip4ai stopping")
        self.notifier.stopping()
        await self.manager.shutdown()
        if self.engine is not None:
            await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.outbox.close()
        if self.http is not None:
            await self.http.close()
        await self.store.close()
        logger.info("x sip4ai stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = App(config)
    try:
        await app.start()
        await stop.wait()
    finally:
        await app.stop()
