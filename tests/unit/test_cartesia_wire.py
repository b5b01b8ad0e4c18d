"""Cartesia TTS codec, sentence splitting and the pipeline's chat history (5a)."""

from __future__ import annotations

import base64
import json

import pytest

from sip4ai.errors import ProviderProtocolError
from sip4ai.providers import cartesia_wire as wire
from sip4ai.providers.cartesia_dialog import (
    INSTRUCTION_NAME,
    INTERRUPTED_MARK,
    PENDING_TOOL_OUTPUT,
    Dialog,
    ReplyState,
)
from sip4ai.providers.chat_completions_wire import ToolCallRequest


pytestmark = pytest.mark.unit

CHUNK = json.dumps(
    {
        "type": "chunk",
        "context_id": "c1-r1",
        "data": base64.b64encode(b"\xff" * 160).decode(),
        "done": False,
        "status_code": 206,
        "step_time": 12.3,
        "flush_id": 1,
    }
)
TIMESTAMPS = (
    '{"type":"timestamps","context_id":"c1-r1","done":false,"status_code":206,'
    '"word_timestamps":{"words":["Hello,","there."],"start":[0.0,0.42],"end":[0.42,0.8]}}'
)
DONE = '{"type":"done","context_id":"c1-r1","done":true,"status_code":200}'
FLUSH_DONE = (
    '{"type":"flush_done","context_id":"c1-r1","done":false,"flush_done":true,'
    '"flush_id":1,"status_code":206}'
)
ERROR = (
    '{"type":"error","context_id":"c1-r2","done":true,"status_code":400,"title":"Invalid",'
    '"message":"voice not found","error_code":"bad","doc_url":"x","request_id":"r"}'
)


def test_generation_request_shape() -> None:
    request = json.loads(wire.generation_request("c1-r1", "Hello. ", voice_id="v-1", more=True))
    assert request == {
        "context_id": "c1-r1",
        "model_id": wire.MODEL_ID,
        "transcript": "Hello. ",
        "voice": {"mode": "id", "id": "v-1"},
        "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
        "language": "en",
        "continue": True,
        "add_timestamps": True,
        "max_buffer_delay_ms": 0,
    }
    last = json.loads(wire.generation_request("c1-r1", "", voice_id="v-1", more=False))
    assert last["continue"] is False and last["transcript"] == ""
    assert json.loads(wire.cancel("c1-r1")) == {"context_id": "c1-r1", "cancel": True}
    headers = wire.auth_headers("key-1")
    assert headers["X-API-Key"] == "key-1" and headers["Cartesia-Version"]


def test_decode_recorded_server_messages() -> None:
    assert wire.decode(CHUNK) == wire.TtsAudio("c1-r1", b"\xff" * 160)
    assert wire.decode(TIMESTAMPS) == wire.TtsWords("c1-r1", ("Hello,", "there."), (0.42, 0.8))
    assert wire.decode(DONE) == wire.TtsDone("c1-r1")
    assert wire.decode(FLUSH_DONE) is None
    error = wire.decode(ERROR)
    assert isinstance(error, wire.TtsError)
    assert error == wire.TtsError("c1-r2", 400, "voice not found")
    assert not wire.fatal_error(error)
    old_style = wire.decode('{"error":"Invalid API key","status_code":401}')
    assert isinstance(old_style, wire.TtsError) and wire.fatal_error(old_style)


@pytest.mark.parametrize(
    "raw",
    [
        "{nope",
        "[]",
        '{"type":"chunk","context_id":"c","data":"***"}',
        '{"type":"timestamps","context_id":"c","word_timestamps":{"words":["a"],"end":[]}}',
    ],
)
def test_decode_rejects_malformed(raw: str) -> None:
    with pytest.raises(ProviderProtocolError):
        wire.decode(raw)


def test_sentence_splitter_streams_whole_sentences() -> None:
    splitter = wire.SentenceSplitter()
    out: list[str] = []
    for piece in ["Sure", ", I can ", "help with that. Your ", "order ships", " today! And"]:
        out += splitter.push(piece)
    assert out == ["Sure, I can help with that. ", "Your order ships today! "]
    assert splitter.flush() == "And"
    assert splitter.flush() == ""


def test_sentence_splitter_keeps_very_short_sentences_with_the_next() -> None:
    splitter = wire.SentenceSplitter()
    assert splitter.push("Hi. Yes. ") == []
    assert splitter.push("I am here to help. ") == ["Hi. Yes. I am here to help. "]


def reply_with_words() -> ReplyState:
    reply = ReplyState("r1", sent=["Hello there. ", "How are you today?"])
    reply.words = [("Hello", 0.3), ("there.", 0.6), ("How", 0.9), ("are", 1.1)]
    return reply


def test_dialog_messages_with_tools_and_instructions() -> None:
    dialog = Dialog("Be brief.")
    dialog.add_user("Transfer me")
    call = ToolCallRequest("call_1", "transfer", '{"to":"sales"}')
    dialog.add_assistant("r1", "", (call,))
    assert dialog.waiting_for_tools() and dialog.knows_call("call_1")
    messages = dialog.messages("Say goodbye.")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["tool_calls"][0]["function"] == {
        "name": "transfer",
        "arguments": '{"to":"sales"}',
    }
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": PENDING_TOOL_OUTPUT,
    }
    assert messages[4] == {"role": "system", "name": INSTRUCTION_NAME, "content": "Say goodbye."}
    dialog.set_tool_output("call_1", '{"ok":true}')
    assert not dialog.waiting_for_tools()
    assert dialog.messages()[3]["content"] == '{"ok":true}'
    assert len(dialog.messages()) == 4


def test_truncate_keeps_the_heard_words_and_marks_the_cut() -> None:
    dialog = Dialog("x")
    reply = reply_with_words()
    dialog.track(reply)
    dialog.add_assistant("r1", reply.text)
    assert dialog.truncate("r1", 500)
    assert dialog.messages()[-1] == {
        "role": "assistant",
        "content": f"Hello there.{INTERRUPTED_MARK}",
    }
    assert dialog.truncate("r1", 0)
    assert dialog.messages()[-1] == {"role": "system", "content": "x"}
    assert not dialog.truncate("unknown", 100)


def test_truncate_of_a_fully_heard_reply_changes_nothing() -> None:
    dialog = Dialog("x")
    reply = reply_with_words()
    reply.tts_done = True
    dialog.track(reply)
    dialog.add_assistant("r1", reply.text)
    assert not dialog.truncate("r1", 5000)
    assert dialog.messages()[-1]["content"] == "Hello there. How are you today?"


def test_interrupted_reply_not_yet_in_history_is_added_marked() -> None:
    dialog = Dialog("x")
    dialog.add_user("Hi")
    dialog.interrupted("r2", "Well")
    assert dialog.messages()[-1] == {"role": "assistant", "content": f"Well{INTERRUPTED_MARK}"}
    dialog.interrupted("r2", "")
    assert dialog.messages()[-1] == {"role": "user", "content": "Hi"}
    dialog.interrupted("r3", "")
    assert len(dialog.messages()) == 2


def test_reply_state_texts() -> None:
    reply = reply_with_words()
    assert reply.text == "Hello there. How are you today?"
    assert reply.received_text() == "Hello there. How are"
    assert reply.heard_text(650) == "Hello there. How"
    assert reply.heard_text(600) == "Hello there."
    assert reply.heard_text(1) == "Hello"
    assert reply.heard_text(0) == ""
    assert ReplyState("r", sent=["No timestamps"]).received_text() == ""
    assert ReplyState("r", sent=["No timestamps"], audio_bytes=80).received_text() == "No"
    reply.audio_bytes = 8 * 1100
    assert reply.received_text() == "Hello there. How are"
    reply.audio_bytes = 8 * 1200
    assert reply.received_text() == "Hello there. How are you"
