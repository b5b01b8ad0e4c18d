"""Native SIP testbed: Kamailio, SIPp and RTP capture as processes on free loopback ports.

Modules (import them directly; this package imports nothing on its own):

* ``kamailio``   Kamailio registrar/proxy: start/stop/restart, users, static routes, JSON-RPC
* ``sipp``       SIPp runs: SippOptions -> SippFactory.run()/start() -> SippResult
* ``sipp_stats`` parsers for SIPp's statistics, counts and error files
* ``capture``    tcpdump on lo -> CaptureResult (UDP datagrams, RTP streams)
* ``pcap``       pure-Python pcap reader (EN10MB, LINUX_SLL/SLL2, NULL/LOOP, RAW; IPv4/IPv6)
* ``rtp``        RTP parsing, per-stream audio, RFC 4733 DTMF, pacing statistics
* ``g711``       G.711 by law name and payload type (tables from sip4ai.audio.g711)
* ``tones``      tone files for SIPp, tone analysis (dominant frequency, Goertzel)
* ``ports``, ``procs``, ``sip_probe``, ``paths``: free ports, process helpers, OPTIONS probe

The pytest fixtures in tests/e2e/conftest.py are thin wrappers over these; QA scripts and
bench/ use the same classes without pytest.
"""
