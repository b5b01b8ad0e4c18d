"""SipEngine on baresip-python 0.5.2a3 (libre/baresip 4.10).

Everything runs on the asyncio loop: the library executes SIP on its own thread and delivers its
events here through ``call_soon_threadsafe``; its commands are awaitables; audio goes through
non-blocking rings (``baresip_media``). One runtime-wide listener receives every stack event:
registration events go to ``RegistrationSupervisor``, call events to ``CallTracker``.

Log prefixes: ``>`` sent, ``<`` received, ``=`` state, ``x`` teardown, ``!`` error. Caller and
callee numbers only ever go into ``extra={"pii.<name>": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from sip4ai.config import SipConfig
from sip4ai.errors import CallError, CallStateError, SipUnavailable
from sip4ai.sip.baresip_calls import CallTracker
from sip4ai.sip.baresip_facade import (
    Agent,
    Notice,
    Stack,
    StackError,
    StaleHandle,
    TransferRefused,
)
from sip4ai.sip.baresip_legs import Leg
from sip4ai.sip.baresip_registration import Backoff, RegistrationSupervisor
from sip4ai.sip.baresip_settings import caller_aor, plan_stack, redact_aor
from sip4ai.sip.interface import (
    DialRequest,
    EndCause,
    MediaStream,
    RegistrationChanged,
    RegistrationState,
    SipEvent,
)
from sip4ai.sip.registrar_probe import ProbeTarget, RegistrarProbe
from sip4ai.sip.rtp_guard import RtpGuard
from sip4ai.sip.sipmsg import TraceRecord
from sip4ai.sip.uri import TrustedSources, request_uri


__all__ = ["BaresipEngine"]

logger = logging.getLogger(__name__)

TRANSFER_TIMEOUT_S = 60.0
STOP_HANGUP_WAIT_S = 3.0
MAX_CALLER_IDENTITIES = 32
DEFAULT_BACKOFF = Backoff()


class BaresipEngine:
    """One SIP user agent process-wide (baresip allows one running stack per process)."""

    def __init__(self, config: SipConfig, *, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self._config = config
        self._plan = plan_stack(config)
        self._backoff = backoff
        self._stack = Stack(
            net_interface=self._plan.net_interface,
            config_text=self._plan.config_text,
            max_calls=self._plan.max_calls,
            rtp_timeout_s=self._plan.rtp_timeout_s,
        )
        self._queue: asyncio.Queue[SipEvent | None] = asyncio.Queue()
        self._calls = CallTracker(
            emit=self._emit,
            spawn=self._spawn,
            trunk_mode=self._plan.trunk_mode,
            codecs=config.codecs,
        )
        self._rtp_guard = RtpGuard()
        self._agent: Agent | None = None
        self._caller_agents: dict[tuple[str, str], Agent] = {}
        self._registration: RegistrationSupervisor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._state = "new"
        self._stopped: asyncio.Future[None] | None = None

    # ---- SipEngine: lifecycle -----------------------------------------------------------------

    @property
    def registration(self) -> RegistrationState:
        if self._registration is None:
            return RegistrationState.UNREGISTERED
        return self._registration.state

    @property
    def name(self) -> str:
        return "baresip"

    @property
    def stack_config_text(self) -> str:
        """The full configuration the stack parses (diagnostics and regression tests)."""
        return self._stack.rendered_config

    async def start(self) -> None:
        if self._state != "new":
            raise SipUnavailable(f"engine cannot start in state {self._state}")
        self._state = "starting"
        self._calls.trusted = await self._resolve_trusted_sources()
        try:
            await self._stack.start(self._on_notice, self._on_trace, self._on_stack_dead)
            agent = await self._stack.new_agent(self._plan.account_aor)
        except StackError as exc:
            self._state = "stopped"
            await self._stack.close()
            raise SipUnavailable(f"SIP stack failed to start: {exc}") from exc
        self._agent = agent
        agent.on_incoming(self._calls.adopt_inbound)
        self._state = "running"
        logger.info(
            "= SIP stack up: listen %s (%s), account %s, max %d calls",
            self._config.listen,
            self._config.transport,
            redact_aor(self._plan.account_aor),
            self._plan.max_calls,
        )
        if self._plan.registers:
            self._registration = RegistrationSupervisor(
                agent,
                registrar=self._plan.registrar,
                registrar_host=self._plan.registrar_host,
                emit=self._emit,
                backoff=self._backoff,
                probe=self._registrar_probe(),
            )
            self._spawn(self._registration.run(), "sip-registration")
        elif self._plan.trunk_mode:
            logger.info("= trunk mode: no registration, INVITEs accepted from trusted sources")

    async def stop(self) -> None:
        if self._stopped is not None:
            await self._stopped
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            if self._state == "running":
                self._state = "stopping"
                await self._hangup_all()
                for task in list(self._tasks):
                    if task.get_name() == "sip-registration":
                        task.cancel()
                if self._registration is not None:
                    await self._registration.unregister()
                await self._stack.close()
            await self._cancel_tasks()
        finally:
            self._state = "stopped"
            self._queue.put_nowait(None)
            self._stopped.set_result(None)
            logger.info("x SIP stack stopped")

    def events(self) -> AsyncIterator[SipEvent]:
        return self._event_stream()

    async def _event_stream(self) -> AsyncIterator[SipEvent]:
        while (event := await self._queue.get()) is not None:
            yield event

    # ---- SipEngine: call commands ---------------------------------------------------------------

    async def answer(self, leg_id: str) -> None:
        leg = self._live_leg(leg_id)
        if leg is None or not leg.inbound or leg.answered or leg.local_hangup:
            return
        logger.info("> 200 OK leg %s", leg_id)
        await self._command(leg, leg.control.answer(), "answer")

    async def reject(self, leg_id: str, status_code: int = 486, reason: str = "Busy Here") -> None:
        leg = self._live_leg(leg_id)
        if leg is None or leg.answered or leg.local_hangup:
            return
        if status_code != 486:
            logger.info(
                "= leg %s: %d %s requested, sending 486 (baresip-python can send no other)",
                leg_id,
                status_code,
                reason,
            )
        leg.local_hangup = True
        logger.info("> 486 Busy Here leg %s", leg_id)
        await self._command(leg, leg.control.reject(), "reject")

    async def hangup(self, leg_id: str) -> None:
        leg = self._live_leg(leg_id)
        if leg is None or leg.local_hangup:
            return
        leg.local_hangup = True
        what = "BYE" if leg.answered else ("486" if leg.inbound else "CANCEL")
        logger.info("> %s leg %s", what, leg_id)
        await self._command(leg, leg.control.hangup(), "hangup")

    async def dial(self, request: DialRequest) -> str:
        if self._state != "running" or self._agent is None:
            raise SipUnavailable("the SIP engine is not running")
        try:
            uri = request_uri(request.target, self._plan.domain)
        except ValueError as exc:
            raise CallError(f"cannot dial: {exc}") from None
        agent = await self._agent_for(request.caller_id, request.display_name)
        headers: dict[str, str] = {}
        if self._config.p_asserted_identity and request.caller_id:
            name = f'"{request.display_name}" ' if request.display_name else ""
            headers["P-Asserted-Identity"] = f"{name}<sip:{request.caller_id}@{self._plan.domain}>"
        try:
            control = await agent.dial(uri, headers)
        except StackError as exc:
            logger.warning("! INVITE refused by the stack: %s", exc, extra={"pii.to": uri})
            raise CallError(f"the SIP stack refused to dial: {exc}") from None
        leg = self._calls.adopt_outbound(
            control, timeout_s=request.timeout_s, on_timeout=self._on_dial_timeout
        )
        logger.info("> INVITE leg %s", leg.leg_id, extra={"pii.to": uri})
        return leg.leg_id

    async def send_dtmf(self, leg_id: str, digits: str) -> None:
        leg = self._require_answered(leg_id)
        logger.info("> DTMF leg %s (%d digits)", leg_id, len(digits), extra={"pii.dtmf": digits})
        await self._command(leg, leg.control.send_dtmf(digits), "send DTMF")

    async def transfer(self, leg_id: str, target: str) -> None:
        leg = self._require_answered(leg_id)
        if leg.transfer_pending:
            raise CallStateError("a transfer is already in progress on this leg")
        try:
            uri = request_uri(target, self._plan.domain)
        except ValueError as exc:
            raise CallError(f"cannot transfer: {exc}") from None
        leg.transfer_pending = True
        logger.info("> REFER leg %s", leg_id, extra={"pii.refer_to": uri})
        self._spawn(self._run_transfer(leg, uri), f"leg-{leg_id}:transfer")

    def media(self, leg_id: str) -> MediaStream | None:
        leg = self._calls.get(leg_id)
        return leg.media if leg is not None else None

    # ---- stack callbacks (on the loop) --------------------------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        if self._registration is not None:
            self._registration.on_notice(notice)
        if notice.call:
            self._calls.on_notice(notice)

    def _on_trace(self, record: TraceRecord) -> None:
        self._calls.on_trace(record)
        self._rtp_guard.on_trace(record)

    def _on_dial_timeout(self, leg: Leg) -> None:
        if leg.ended or leg.answered or leg.local_hangup:
            return
        logger.info("= leg %s: no answer before the dial timeout, cancelling", leg.leg_id)
        leg.no_answer_timeout = True
        leg.local_hangup = True
        self._spawn(self._command(leg, leg.control.hangup(), "cancel"), f"leg-{leg.leg_id}:cancel")

    def _on_stack_dead(self) -> None:
        logger.critical("! the SIP stack's thread died: every call is lost; restart the process")
        self._calls.end_all(EndCause.ERROR, "SIP stack died")
        self._emit(RegistrationChanged(RegistrationState.FAILED, "SIP stack died", None))

    async def _run_transfer(self, leg: Leg, uri: str) -> None:
        """Sends the REFER; outcomes normally arrive as stack events (see CallTracker)."""
        try:
            await leg.control.transfer(uri, TRANSFER_TIMEOUT_S)
        except TransferRefused as exc:
            logger.info("< transfer of leg %s failed: %s", leg.leg_id, exc)
            self._calls.transfer_outcome(leg, success=False, status=exc.status)
        except StackError as exc:
            logger.warning("! transfer of leg %s not sent: %s", leg.leg_id, exc)
            self._calls.transfer_outcome(leg, success=False, status=None)

    # ---- helpers ------------------------------------------------------------------------------

    def _live_leg(self, leg_id: str) -> Leg | None:
        leg = self._calls.get(leg_id)
        if leg is None or leg.ended:
            logger.debug("leg %s is gone; command ignored", leg_id)
            return None
        return leg

    def _require_answered(self, leg_id: str) -> Leg:
        leg = self._live_leg(leg_id)
        if leg is None:
            raise CallStateError(f"leg {leg_id} has ended")
        if not leg.answered:
            raise CallStateError(f"leg {leg_id} is not answered")
        return leg

    async def _command(self, leg: Leg, command: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await command
        except StaleHandle:
            logger.debug("%s on leg %s: call already gone", what, leg.leg_id)
        except (StackError, ValueError) as exc:
            logger.warning("! %s on leg %s failed: %s", what, leg.leg_id, exc)
            raise CallError(f"{what} failed: {exc}") from None

    async def _agent_for(self, caller_id: str | None, display: str | None) -> Agent:
        """The account to dial from: the stack puts the account's identity in From."""
        assert self._agent is not None
        if not caller_id and not display:
            return self._agent
        user = caller_id or self._config.username or "sip4ai"
        key = (user, display or "")
        agent = self._caller_agents.get(key)
        if agent is not None:
            return agent
        if len(self._caller_agents) >= MAX_CALLER_IDENTITIES:
            # The stack cannot free accounts; bound how many caller IDs get one.
            logger.warning(
                "! more than %d caller IDs in use: dialling as the main account",
                MAX_CALLER_IDENTITIES,
            )
            return self._agent
        try:
            aor = caller_aor(self._config, self._plan, user=user, display=display or "")
            agent = await self._stack.new_agent(aor)
        except ValueError as exc:
            raise CallError(f"cannot dial with this caller ID: {exc}") from None
        except StackError as exc:
            raise CallError(f"cannot create the caller identity: {exc}") from None
        agent.on_incoming(self._calls.adopt_inbound)
        self._caller_agents[key] = agent
        return agent

    def _registrar_probe(self) -> RegistrarProbe | None:
        try:
            target = ProbeTarget.for_registrar(
                self._plan.registrar,
                transport=self._config.transport,
                user=self._config.username or "",
                domain=self._plan.domain,
            )
        except ValueError as exc:
            logger.info("= no registrar probe (%s): bindings are checked at each refresh", exc)
            return None
        return RegistrarProbe(target)

    async def _resolve_trusted_sources(self) -> TrustedSources:
        """Host names in trusted_sources are resolved once, at start."""
        loop = asyncio.get_running_loop()
        entries: list[str] = []
        for entry in self._config.trusted_sources:
            try:
                TrustedSources([entry])
            except ValueError:
                pass
            else:
                entries.append(entry)
                continue
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(entry, None), 5.0)
            except (OSError, TimeoutError) as exc:
                raise SipUnavailable(
                    f"sip.trusted_sources: cannot resolve {entry}: {exc}"
                ) from None
            entries.extend(str(info[4][0]) for info in infos)
        return TrustedSources(entries)

    async def _hangup_all(self) -> None:
        for leg in self._calls.live():
            leg.local_hangup = True
            try:
                await leg.control.hangup()
            except StackError as exc:
                logger.debug("x hangup of leg %s at stop: %s", leg.leg_id, exc)
        if not await self._calls.wait_idle(STOP_HANGUP_WAIT_S):
            logger.warning("! %d legs did not close in time at stop", len(self._calls.live()))
        self._calls.end_all(EndCause.LOCAL_HANGUP, "shutdown")

    def _emit(self, event: SipEvent) -> None:
        self._queue.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("! task %s failed: %r", task.get_name(), exc)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
