"""Registration supervision for the pjsua2 backend: first REGISTER, retries with backoff while the
registrar is unreachable or refuses, and ``RegistrationChanged`` events.

pjsua refreshes a working registration by itself and reports each refresh through
``onRegState``; its own retry timer is switched off (``retryIntervalSec = 0``) so that this
supervisor's backoff decides when to try again, as with the baresip backend.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from sip4ai.sip.causes import RegistrationFailure, classify_registration_failure
from sip4ai.sip.interface import RegistrationChanged, RegistrationState
from sip4ai.sip.pjsua2_events import RegState, registration_failure_input
from sip4ai.sip.uri import is_ip_literal


__all__ = ["BackoffPolicy", "DefaultBackoff", "PjRegistration"]

logger = logging.getLogger(__name__)

# Longer than the stack's own transaction timeout (Timer F, 32 s).
REGISTER_TIMEOUT_S = 40.0
UNREGISTER_TIMEOUT_S = 2.0
DNS_CHECK_TIMEOUT_S = 5.0


class BackoffPolicy(Protocol):
    """``baresip_registration.Backoff`` fits; kept structural so this backend does not import
    the baresip library."""

    def delay(self, attempt: int, unit_random: float) -> float: ...


@dataclass(frozen=True, slots=True)
class DefaultBackoff:
    """2 s doubling to 60 s, +-20 % jitter (the same policy as the baresip backend)."""

    first_s: float = 2.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, unit_random: float) -> float:
        base = min(self.max_s, self.first_s * self.factor ** min(attempt, 32))
        return base * (1 - self.jitter + 2 * self.jitter * unit_random)


class PjRegistration:
    def __init__(
        self,
        *,
        set_registration: Callable[[bool], Awaitable[None]],
        registrar: str,
        registrar_host: str,
        emit: Callable[[RegistrationChanged], None],
        backoff: BackoffPolicy,
    ) -> None:
        self._set_registration = set_registration
        self._registrar = registrar
        self._registrar_host = registrar_host
        self._emit = emit
        self._backoff = backoff
        self._state = RegistrationState.UNREGISTERED
        self._reason = ""
        self._outcome: asyncio.Future[RegState] | None = None
        self._ever_registered = False
        self._stopping = False

    @property
    def state(self) -> RegistrationState:
        return self._state

    def on_reg_state(self, notice: RegState) -> None:
        """Every ``onRegState`` of the account, on the loop."""
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(notice)
            return
        if self._stopping or not notice.renew:
            return
        if notice.code // 100 == 2 and notice.expires_s > 0:
            self._set(RegistrationState.REGISTERED, f"{notice.code} {notice.reason}", notice.code)

    async def run(self) -> None:
        """Register, then keep the registration alive until cancelled."""
        attempt = 0
        self._set(RegistrationState.REGISTERING, "registering", None)
        while True:
            failure = await self._attempt()
            if failure is None:
                attempt = 0
                failure = await self._lost()
            delay = self._backoff.delay(attempt, random.random())
            attempt += 1
            await self._report(failure, delay)
            await asyncio.sleep(delay)

    async def unregister(self) -> None:
        """Best effort, bounded; called once on shutdown."""
        self._stopping = True
        if not self._ever_registered:
            return
        try:
            await self._set_registration(False)
            outcome = await asyncio.wait_for(self._next_outcome(None), UNREGISTER_TIMEOUT_S)
        except Exception as exc:
            logger.warning("! SIP unregister from %s failed: %r", self._registrar, exc)
        else:
            logger.info("= SIP unregistered from %s (%d)", self._registrar, outcome.code)
        self._state = RegistrationState.UNREGISTERED

    async def _lost(self) -> RegState:
        """Wait through the stack's refreshes until one fails."""
        while True:
            outcome = await self._next_outcome(None)
            if outcome.code // 100 != 2 or outcome.expires_s <= 0:
                return outcome

    async def _next_outcome(self, timeout_s: float | None) -> RegState:
        self._outcome = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(self._outcome, timeout_s)
        finally:
            self._outcome = None

    async def _attempt(self) -> RegState | None:
        loop = asyncio.get_running_loop()
        self._outcome = loop.create_future()
        outcome = self._outcome
        try:
            await self._set_registration(True)
        except Exception as exc:
            self._outcome = None
            return RegState(0, str(exc), str(exc), False, 0)
        try:
            result = await asyncio.wait_for(outcome, REGISTER_TIMEOUT_S)
        except TimeoutError:
            return RegState(408, "timeout", "timeout", False, 0)
        finally:
            self._outcome = None
        if result.code // 100 == 2 and result.expires_s > 0:
            self._set(RegistrationState.REGISTERED, f"{result.code} {result.reason}", result.code)
            return None
        return result

    async def _report(self, failure: RegState, retry_in_s: float) -> None:
        status, text = registration_failure_input(failure)
        resolves = await self._name_resolves(status)
        verdict = classify_registration_failure(status, text, name_resolves=resolves)
        if self._set(RegistrationState.FAILED, verdict.reason, verdict.status_code):
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

    async def _name_resolves(self, status: int | None) -> bool | None:
        host = self._registrar_host
        if status is not None or is_ip_literal(host):
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
