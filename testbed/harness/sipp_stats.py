"""Parsers for SIPp 3.6 output files: -trace_stat, -trace_counts, -trace_error_codes, -trace_err.

Pure functions over text, so they can be unit-tested on stored files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SippStats:
    """Cumulative counters from the last row of SIPp's statistics CSV (``-trace_stat``)."""

    total_calls_created: int
    successful_calls: int
    failed_calls: int
    current_calls: int
    """Calls still running when the row was written (0 after a clean exit)."""
    retransmissions: int
    failed_unexpected_message: int
    """E.g. a 401 or 486 where the scenario expected 200."""
    failed_call_rejected: int
    failed_timeout_on_recv: int
    failed_max_udp_retrans: int
    incoming_calls: int
    outgoing_calls: int
    dead_call_messages: int
    """Messages for calls SIPp had already finished (late retransmissions)."""
    out_of_call_messages: int
    elapsed: str
    """SIPp's own ``ElapsedTime(C)`` text, ``HH:MM:SS:uuuuuu``."""
    columns: Mapping[str, str]
    """The whole last row by column name, for counters without a field here
    (e.g. ``ResponseTimesetup(C)``, ``CallLength(C)``)."""

    def summary(self) -> str:
        return (
            f"created={self.total_calls_created} ok={self.successful_calls} "
            f"failed={self.failed_calls} (unexpected={self.failed_unexpected_message}, "
            f"recv-timeout={self.failed_timeout_on_recv}, "
            f"max-udp-retrans={self.failed_max_udp_retrans}) "
            f"retrans={self.retransmissions} current={self.current_calls}"
        )


def _rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty SIPp CSV")
    header = [h.strip() for h in lines[0].rstrip(";").split(";")]
    rows = [[c.strip() for c in line.rstrip(";").split(";")] for line in lines[1:]]
    return header, rows


def _int(columns: Mapping[str, str], name: str) -> int:
    value = columns.get(name, "")
    try:
        return int(float(value)) if value else 0
    except ValueError:
        return 0


def parse_stat_csv(text: str) -> SippStats:
    """Parse a ``-trace_stat`` file; ValueError if it has no data row yet."""
    header, rows = _rows(text)
    if not rows:
        raise ValueError("SIPp statistics CSV has a header but no data row")
    columns = dict(zip(header, rows[-1], strict=False))
    return SippStats(
        total_calls_created=_int(columns, "TotalCallCreated"),
        successful_calls=_int(columns, "SuccessfulCall(C)"),
        failed_calls=_int(columns, "FailedCall(C)"),
        current_calls=_int(columns, "CurrentCall"),
        retransmissions=_int(columns, "Retransmissions(C)"),
        failed_unexpected_message=_int(columns, "FailedUnexpectedMessage(C)"),
        failed_call_rejected=_int(columns, "FailedCallRejected(C)"),
        failed_timeout_on_recv=_int(columns, "FailedTimeoutOnRecv(C)"),
        failed_max_udp_retrans=_int(columns, "FailedMaxUDPRetrans(C)"),
        incoming_calls=_int(columns, "IncomingCall(C)"),
        outgoing_calls=_int(columns, "OutgoingCall(C)"),
        dead_call_messages=_int(columns, "DeadCallMsgs(C)"),
        out_of_call_messages=_int(columns, "OutOfCallMsgs(C)"),
        elapsed=columns.get("ElapsedTime(C)", ""),
        columns=columns,
    )


def parse_counts_csv(text: str) -> dict[str, int]:
    """Per-message counters from a ``-trace_counts`` file (its rows are cumulative: last row).

    Keys are SIPp's column names: scenario index, message, event, e.g. ``1_401_Recv``,
    ``3_200_Unexp`` (a different message came while index 3 expected a 200), ``0_INVITE_Retrans``.
    """
    header, rows = _rows(text)
    if not rows:
        return {}
    totals: dict[str, int] = {}
    for name, value in zip(header, rows[-1], strict=False):
        if name in ("CurrentTime", "ElapsedTime"):
            continue
        try:
            totals[name] = int(value)
        except ValueError:
            continue
    return totals


def parse_error_codes_csv(text: str) -> list[int]:
    """Status codes of unexpected responses from a ``-trace_error_codes`` file, in order.

    Each row is ``<date>;<elapsed>;<code>,<code>,...`` with the codes seen in that period.
    """
    codes: list[int] = []
    for line in text.splitlines():
        last = line.rstrip().rstrip(";").split(";")[-1] if ";" in line else ""
        codes += [int(c) for c in last.split(",") if c.strip().isdigit()]
    return codes


_UNEXPECTED_STATUS = re.compile(r"received '\s*SIP/2\.0 (\d{3})")


def unexpected_status_codes(error_log: str) -> list[int]:
    """Status codes of the unexpected responses reported in a ``-trace_err`` log, in order.

    SIPp writes e.g. ``Aborting call on unexpected message for Call-Id '...': while expecting
    '200' (index 3), received 'SIP/2.0 401 Unauthorized``.
    """
    return [int(code) for code in _UNEXPECTED_STATUS.findall(error_log)]
