"""Deepgram streaming STT codec and utterance assembly on recorded message shapes (5c)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import deepgram_stt_wire as wire


pytestmark = pytest.mark.unit


def results(text: str, *, is_final: bool, speech_final: bool = False) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 1.2,
            "start": 0.0,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": False,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text,
                        "confidence": 0.98,
                        "words": [
                            {
                                "word": "i",
                                "start": 0.1,
                                "end": 0.2,
                                "confidence": 0.99,
                                "punctuated_word": "I",
                            }
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": "b2a6",
                "model_info": {"name": "general-nova-3", "version": "2024", "arch": "nova-3"},
                "model_uuid": "c1",
            },
        }
    )


SPEECH_STARTED = '{"type":"SpeechStarted","channel":[0],"timestamp":3.1}'
UTTERANCE_END = '{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.395}'
METADATA = (
    '{"type":"Metadata","transaction_key":"deprecated","request_id":"r-9","sha256":"ab",'
    '"created":"2026-01-01T00:00:00Z","duration":12.3,"channels":1}'
)


def test_listen_url_asks_for_mulaw_8k_with_interims_and_vad_events() -> None:
    url = wire.listen_url("wss://api.deepgram.com/v1/listen", "nova-3")
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/v1/listen"
    assert query["model"] == "nova-3"
    assert query["encoding"] == "mulaw" and query["sample_rate"] == "8000"
    assert query["interim_results"] == "true" and query["vad_events"] == "true"
    assert query["endpointing"] == str(wire.ENDPOINTING_MS)
    assert int(query["utterance_end_ms"]) >= 1000


def test_listen_url_keeps_an_existing_query() -> None:
    url = wire.listen_url("ws://127.0.0.1:9/v1/listen?tier=x", "nova-2")
    assert url.startswith("ws://127.0.0.1:9/v1/listen?tier=x&model=nova-2&")


def test_auth_and_control_messages() -> None:
    assert wire.auth_headers("k1") == {"Authorization": "Token k1"}
    assert json.loads(wire.keepalive()) == {"type": "KeepAlive"}
    assert json.loads(wire.close_stream()) == {"type": "CloseStream"}
    assert json.loads(wire.finalize()) == {"type": "Finalize"}


def test_decode_recorded_messages() -> None:
    assert wire.decode(results(" I need help ", is_final=True, speech_final=True)) == (
        wire.SttResult("I need help", is_final=True, speech_final=True)
    )
    assert wire.decode(SPEECH_STARTED) == wire.SttSpeechStarted(3.1)
    assert wire.decode(UTTERANCE_END) == wire.SttUtteranceEnd(2.395)
    assert wire.decode(METADATA) == wire.SttMetadata("r-9", 12.3)
    assert wire.decode('{"type":"Warning","description":"x"}') is None


@pytest.mark.parametrize(
    "raw",
    ["not json", "[1]", '{"no":"type"}', '{"type":"Results","channel":{}}', b"\xff\xfe"],
)
def test_decode_rejects_malformed(raw: str | bytes) -> None:
    with pytest.raises(ProviderProtocolError):
        wire.decode(raw)


def feed_all(assembler: wire.UtteranceAssembler, raws: list[str]) -> list[wire.TurnEvent]:
    out: list[wire.TurnEvent] = []
    for raw in raws:
        event = wire.decode(raw)
        assert event is not None
        out += assembler.feed(event)
    return out


def test_utterance_is_the_finals_up_to_speech_final() -> None:
    turns = feed_all(
        wire.UtteranceAssembler(),
        [
            SPEECH_STARTED,
            results("I need", is_final=False),
            results("I need help", is_final=False),
            results("I need help", is_final=True),
            results("with my bill", is_final=False),
            results("with my bill.", is_final=True, speech_final=True),
        ],
    )
    assert turns == [wire.CallerSpeaking(), wire.Utterance("I need help with my bill.")]


def test_interim_without_vad_event_is_one_barge_in_per_utterance() -> None:
    assembler = wire.UtteranceAssembler()
    turns = feed_all(
        assembler,
        [
            results("Stop", is_final=False),
            results("Stop please", is_final=False),
            results("Stop please.", is_final=True),
            UTTERANCE_END,
            results("", is_final=False),
            results("Again", is_final=False),
        ],
    )
    assert turns == [
        wire.CallerSpeaking(),
        wire.Utterance("Stop please."),
        wire.CallerSpeaking(),
    ]
    assert assembler.pending_text == ""


def test_utterance_end_after_speech_final_adds_nothing() -> None:
    turns = feed_all(
        wire.UtteranceAssembler(),
        [results("Yes.", is_final=True, speech_final=True), UTTERANCE_END, UTTERANCE_END],
    )
    assert turns == [wire.CallerSpeaking(), wire.Utterance("Yes.")]


def test_noise_with_empty_finals_makes_no_utterance() -> None:
    assembler = wire.UtteranceAssembler()
    turns = feed_all(
        assembler, [SPEECH_STARTED, results("", is_final=True, speech_final=True), UTTERANCE_END]
    )
    assert turns == [wire.CallerSpeaking()]
    assert assembler.pending_text == ""
