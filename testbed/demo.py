"""`make demo`: one real local call, end to end, on sip4ai's embedded defaults.

Kamailio (registrar + proxy) and the OpenAI Realtime mock start on free loopback ports; sip4ai
starts and registers as aibot; a SIPp caller dials aibot, listens to the greeting, says
something and hangs up. The demo then prints the call record with its transcript, /status and
a few metrics, and stops everything.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from testbed.harness.appliance import Sip4ai
from testbed.harness.kamailio import Kamailio
from testbed.harness.scenario import openai_mock_process, sip_config, turn_file
from testbed.harness.sipp import SippFactory, SippOptions


SCRIPT = {
    "replies": [
        {"text": "Hello! You have reached the sip4ai demo. How can I help?", "duration_ms": 2500},
        {"text": "Certainly, a table for two at seven is booked. Goodbye!", "duration_ms": 2500},
    ],
    "transcripts": ["I would like a table for two at seven, please."],
}


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main() -> int:
    for tool in ("kamailio", "sipp"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: run `make deps` first", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="sip4ai-demo-") as tmp:
        run_dir = Path(tmp)
        script = run_dir / "script.json"
        script.write_text(json.dumps(SCRIPT))
        banner("starting Kamailio, the OpenAI mock and sip4ai on loopback")
        with (
            Kamailio(run_dir / "kamailio", host="127.0.0.1") as kamailio,
            openai_mock_process(run_dir, "--script", str(script)) as base_url,
        ):
            config = sip_config(kamailio) | {"openai": {"base_url": base_url}}
            app = Sip4ai(run_dir, config=config, env={"OPENAI_API_KEY": "sk-demo"})
            with app:
                app.wait_registered()
                print(f"sip4ai registered as aibot at {kamailio.address}; API on :{app.api_port}")
                banner("a SIPp caller dials aibot: listens, speaks, hangs up (about 9 s)")
                caller = SippFactory(run_dir / "sipp").run(
                    SippOptions(
                        "uac_invite_rtp",
                        remote=kamailio.address,
                        service="aibot",
                        audio=turn_file(
                            run_dir / "caller.ulaw", silence_s=3.5, speech_s=1.2, tail_s=5.0
                        ),
                        call_duration_ms=9000,
                    )
                )
                print("caller:", "call completed" if caller.ok else caller.describe())
                call = app.wait_call(lambda c: c["status"] in ("completed", "failed"))
                banner(f"GET /api/calls/{call['id']}")
                print(json.dumps(app.call(call["id"]), indent=2))
                banner("GET /status")
                print(json.dumps(app.status(), indent=2))
                banner("metrics")
                for line in app.metrics().splitlines():
                    if line.startswith(("sip4ai_calls_total", "sip4ai_sip_registered")):
                        print(line)
                code = app.stop()
        banner(f"sip4ai stopped with exit code {code}")
        return 0 if caller.ok and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
