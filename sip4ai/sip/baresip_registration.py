"""Registration supervision: first REGISTER, retries with backoff while the registrar is
unreachable or refuses, and ``RegistrationChanged`` events.

The stack refreshes a working registration by itself (at 90 % of the interval, reported only as
REGISTER_OK); when a refresh fails this supervisor takes over again. Its own backoff replaces
the stack's (30 s doubling to 30 min), which is too slow to notice a registrar coming back.

With a ``RegistrarProbe`` (see ``registrar_probe``) it also notices, between refreshes, a
registrar that stopped answering (reported as failed until it answers again) and a registrar
that lost our binding (restarted with in-memory bindings): both lead to a new REGISTER as soon
as the registrar answers, instead of at the next refresh minutes later.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sip4ai.sip.baresip_facade import Agent, Notice, RegistrationRefused, StackError
from sip4ai.sip.causes import RegistrationFailure, classify_registration_failure, split_status
from sip4ai.sip.interface import RegistrationChanged, RegistrationState
from sip4ai.sip.registrar_probe import Probe, ProbeOutcome
from sip4ai.sip.uri import is_ip_literal


__all__ = ["Backoff", "RegistrationSupervisor"]

logger = logging.getLogger(__name__)

# Longer than the stack's own transaction timeout (Timer F, 32 s), so that a registrar that
# does not answer is reported by the stack ("Connection timed out") and not by us.
REGISTER_TIMEOUT_S = 40.0
UNREGISTER_TIMEOUT_S = 2.0
DNS_CHECK_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 2.0
PROBE_MISSES_FOR_DOWN = 2
"""Consecutive unanswered probes before a registrar that answered before counts as down."""
MAX_UNCONFIRMED_REREGISTERS = 3
"""Re-REGISTERs for a lost binding before one is seen again (no loop if it never shows)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 2.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.2
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter]."""

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("Backoff needs 0 < first_s <= max_s, factor >= 1, 0 <= jitter < 1")

    def delay(self, attempt: int, unit_random: float) -> float:
        """Delay before retry number ``attempt`` (0-based); ``unit_random`` is in [0, 1)."""
        base = min(self.max_s, self.first_s * self.factor ** min(attempt, 32))
        return base * (1 - self.jitter + 2 * self.jitter * unit_random)


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int | None
    text: str
    retry_now: bool = False
    """The registrar answers (it lost our binding): re-REGISTER without backoff."""


class RegistrationSupervisor:
    def __init__(
        self,
        agent: Agent,
        *,
        registrar: str,
        registrar_host: str,
        emit: Callable[[RegistrationChanged], None],
        backoff: Backoff,
        register_timeout_s: float = REGISTER_TIMEOUT_S,
        probe: Probe | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._agent = agent
        self._registrar = registrar
        self._registrar_host = registrar_host
        self._emit = emit
        self._backoff = backoff
        self._register_timeout_s = register_timeout_s
        self._state = RegistrationState.UNREGISTERED
        self._reason = ""
        self._lost: asyncio.Future[_Failure] | None = None
        self._ever_registered = False
        self._stopping = False
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._back = asyncio.Event()
        """Set when the probe hears the registrar again after it was down."""
        self._binding_proven = False
        """A probe once reached us through the registrar: its 404s then mean "binding lost"."""
        self._unconfirmed = 0
        """Re-REGISTERs for a lost binding since the probe last reached us."""
        self._quiet = False
        """Stack registration events are ignored (our own un-REGISTER before a re-REGISTER)."""

    @property
    def state(self) -> RegistrationState:
        return self._state

    def on_notice(self, notice: Notice) -> None:
        """Stack events for this agent (called on the loop for every event)."""
        if notice.ua != self._agent.handle or notice.call or self._stopping or self._quiet:
            return
        if notice.kind == "REGISTER_OK":
            self._set(RegistrationState.REGISTERED, notice.text or "200 OK", 200)
        elif notice.kind == "REGISTER_FAIL" and self._state is RegistrationState.REGISTERED:
            # A refresh failed: hand over to run(), which reports and retries.
            status, _ = split_status(notice.text)
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(_Failure(status, notice.text))

    async def run(self) -> None:
        """Register, then keep the registration alive until cancelled."""
        prober = None
        if self._probe is not None:
            prober = asyncio.get_running_loop().create_task(
                self._probe_loop(self._probe), name="sip-registrar-probe"
            )
        try:
            await self._supervise()
        finally:
            if prober is not None:
                prober.cancel()

    async def _supervise(self) -> None:
        attempt = 0
        self._set(RegistrationState.REGISTERING, "registering", None)
        while True:
            failure = await self._attempt()
            if failure is None:
                attempt = 0
                self._lost = asyncio.get_running_loop().create_future()
                failure = await self._lost
                self._lost = None
            if failure.retry_now:
                # Not a registration failure: the registrar answers, it only forgot us.
                self._set(RegistrationState.REGISTERING, failure.text, None)
                continue
            delay = self._backoff.delay(attempt, random.random())
            attempt += 1
            await self._report(failure, delay)
            await self._pause(delay)

    def _lose(self, failure: _Failure) -> None:
        """A registered binding is gone or unreachable: hand over to the run loop."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(failure)

    async def _pause(self, delay_s: float) -> None:
        """Sleep before the next attempt; cut short when the registrar answers again."""
        try:
            await asyncio.wait_for(self._back.wait(), delay_s)
        except TimeoutError:
            pass

    async def _probe_loop(self, probe: Probe) -> None:
        answered_before = False
        down = False
        misses = 0
        while True:
            outcome = await probe.check()
            if outcome is ProbeOutcome.NO_ANSWER:
                misses += 1
                if answered_before and not down and misses >= PROBE_MISSES_FOR_DOWN:
                    down = True
                    self._back.clear()
                    logger.warning("! SIP registrar %s stopped answering", self._registrar)
                    self._lose(_Failure(None, "Connection timed out"))
            else:
                misses = 0
                answered_before = True
                if down:
                    down = False
                    logger.info("= SIP registrar %s answers again", self._registrar)
                    if self._state is not RegistrationState.REGISTERED:
                        self._back.set()  # re-REGISTER now, not after the backoff
                self._on_binding(outcome)
            await asyncio.sleep(self._probe_interval_s)

    def _on_binding(self, outcome: ProbeOutcome) -> None:
        if outcome is ProbeOutcome.BOUND:
            self._binding_proven = True
            self._unconfirmed = 0
        elif self._state is not RegistrationState.REGISTERED:
            return
        elif (
            outcome is ProbeOutcome.BINDING_MISSING
            and self._binding_proven
            and self._unconfirmed < MAX_UNCONFIRMED_REREGISTERS
        ):
            self._unconfirmed += 1
            logger.warning(
                "! SIP registrar %s no longer has our binding (restarted?): re-registering",
                self._registrar,
            )
            self._lose(_Failure(404, "404 binding lost at the registrar", retry_now=True))

    async def unregister(self) -> None:
        """Best effort, bounded; called once on shutdown."""
        self._stopping = True
        if not self._ever_registered:
            return
        try:
            await self._agent.unregister(UNREGISTER_TIMEOUT_S)
            logger.info("= SIP unregistered from %s", self._registrar)
        except StackError as exc:
            logger.warning("! SIP unregister from %s failed: %s", self._registrar, exc)
        self._state = RegistrationState.UNREGISTERED

    async def _attempt(self) -> _Failure | None:
        """One REGISTER; sent again at once if the registrar comes back while it is pending
        (the stack would otherwise keep retransmitting to it at 4 s intervals)."""
        while True:
            self._back.clear()
            register = asyncio.ensure_future(self._register_once())
            back = asyncio.ensure_future(self._back.wait())
            try:
                await asyncio.wait({register, back}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                back.cancel()
                if not register.done():
                    register.cancel()
            if register.cancelled():
                continue
            return register.result()

    async def _register_once(self) -> _Failure | None:
        if self._ever_registered:
            await self._drop_stale_client()
        try:
            await self._agent.register(self._register_timeout_s)
        except RegistrationRefused as exc:
            if exc.status is None and not exc.reason:
                return _Failure(None, "timeout")  # no outcome within our own timeout
            return _Failure(exc.status, exc.reason or str(exc))
        except StackError as exc:
            return _Failure(None, str(exc))
        self._set(RegistrationState.REGISTERED, "200 OK", 200)
        return None

    async def _drop_stale_client(self) -> None:
        """The stack builds a new REGISTER client on every register(); the old one, if it still
        believes it is registered, sends an un-REGISTER for the same Contact when it is freed,
        which races the new REGISTER and can delete the new binding (seen after a registrar
        restart). Unregistering first leaves the old client nothing to undo."""
        self._quiet = True
        try:
            await self._agent.unregister(UNREGISTER_TIMEOUT_S)
        except StackError as exc:
            logger.debug("= un-REGISTER before re-REGISTER at %s: %s", self._registrar, exc)
        finally:
            self._quiet = False

    async def _report(self, failure: _Failure, retry_in_s: float) -> None:
        resolves = await self._name_resolves(failure)
        verdict = classify_registration_failure(
            failure.status, failure.text, name_resolves=resolves
        )
        changed = self._set(RegistrationState.FAILED, verdict.reason, verdict.status_code)
        if changed:
            self._log_failure(verdict, retry_in_s)
        else:
            logger.debug(
                "! SIP registration still failing (%s), retry in %.1f s", verdict.reason, retry_in_s
            )

    def _log_failure(self, verdict: RegistrationFailure, retry_in_s: float) -> None:
        logger.error(
            "! SIP registration at %s failed: %s: %s; retrying in %.1f s",
            self._registrar,
            verdict.reason,
            verdict.hint or "see the stack's log",
            retry_in_s,
        )

    async def _name_resolves(self, failure: _Failure) -> bool | None:
        host = self._registrar_host
        if failure.status is not None or is_ip_literal(host):
            return None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.getaddrinfo(host, None), DNS_CHECK_TIMEOUT_S)
        except (OSError, TimeoutError):
            return False
        return True

    def _set(self, state: RegistrationState, reason: str, status: int | None) -> bool:
        """One transition point; emits only when state or reason changes."""
        if state is self._state and reason == self._reason:
            return False
        previous = self._state
        self._state, self._reason = state, reason
        if state is RegistrationState.REGISTERED:
            self._ever_registered = True
            logger.info("= SIP registered at %s (%s)", self._registrar, reason)
        else:
            logger.debug("= SIP registration %s -> %s (%s)", previous, state, reason)
        self._emit(RegistrationChanged(state, reason, status))
        return True
