"""WebSocket input streaming and built-in voices through the Ray Serve app (ingress → model replica).

On the session's one Ray instance (tests/support_ray.py); the second test scales the ingress to two
replicas and back.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from serve_app.deployments import INGRESS_DEPLOYMENT
from tests.support_ray import ServeInstance, ray_serve  # noqa: F401 - the session fixture

pytestmark = pytest.mark.ray


def _until(ws: Any, kind: str, context_id: str) -> list[dict[str, Any]]:
    out = []
    while True:
        message = json.loads(ws.recv(timeout=60))
        out.append(message)
        if message["type"] == kind and message.get("context_id") == context_id:
            return out


def _idle(serve: ServeInstance, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (info := serve.model_info())["running"] + info["waiting"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return info


def test_streamed_text_flush_and_barge_in_through_ray(ray_serve: ServeInstance) -> None:  # noqa: F811
    url = ray_serve.base_url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    pieces = ["Good morning", ", and welcome", " back to the show. Today", " we talk about", " lighthouses"]
    with connect(url, open_timeout=30) as ws:
        options = {"speaker": 1, "output_format": "pcm_16000", "max_duration_ms": 30_000, "seed": 4}
        ws.send(json.dumps({"type": "text", "context_id": "c1", "text": pieces[0], **options}))
        for piece in pieces[1:3]:
            ws.send(json.dumps({"type": "text", "context_id": "c1", "text": piece}))
        text = "".join(pieces)
        first = json.loads(ws.recv(timeout=60))  # no flush yet: the first sentence is certain
        assert first["type"] == "audio" and first["text_span"] == [0, text.index(".") + 1]
        for piece in pieces[3:]:
            ws.send(json.dumps({"type": "text", "context_id": "c1", "text": piece}))
        ws.send(json.dumps({"type": "flush", "context_id": "c1"}))
        messages = [first, *_until(ws, "flushed", "c1")]
        audio = [m for m in messages if m["type"] == "audio"]
        assert {tuple(m["text_span"]) for m in audio} == {(0, text.index(".") + 1), (text.index("Today"), len(text))}
        assert all(m["seq"] == i for i, m in enumerate(audio))

        # Mid-sentence: a sentence is being generated when the listener barges in.
        ws.send(json.dumps({"type": "text", "context_id": "c1", "text": " and the people who kept them, night"}))
        ws.send(json.dumps({"type": "flush", "context_id": "c1"}))
        while json.loads(ws.recv(timeout=60))["type"] != "audio":
            pass
        assert ray_serve.model_info()["running"] == 1
        ws.send(json.dumps({"type": "cancel", "context_id": "c1"}))
        done = _until(ws, "done", "c1")[-1]
        assert done["finish_reason"] == "cancelled"
        info = _idle(ray_serve)
        assert info["running"] == info["waiting"] == 0, info  # the engine slot is free

        # The socket goes on: a new context speaks.
        ws.send(json.dumps({"type": "text", "context_id": "c2", "text": "Still here.", "max_duration_ms": 800}))
        ws.send(json.dumps({"type": "close", "context_id": "c2"}))
        after = _until(ws, "done", "c2")
        assert after[-1]["finish_reason"] in ("end_of_audio", "length")
        assert any(m["type"] == "audio" for m in after)


async def _speak_many(base_url: str, n: int) -> list[httpx.Response]:
    body = {"text": "Same voice on every replica.", "voice": "nova", "max_duration_ms": 400}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/speak", json=body) for _ in range(n)))


def test_a_built_in_voice_is_the_same_on_two_ingress_replicas(ray_serve: ServeInstance) -> None:  # noqa: F811
    with ray_serve.deployment_options(INGRESS_DEPLOYMENT, num_replicas=2):
        ray_serve.wait_healthy()
        seen: dict[int, str] = {}
        with httpx.Client(base_url=ray_serve.base_url, timeout=60) as http:
            for _ in range(12):
                assert all(r.status_code == 200 for r in asyncio.run(_speak_many(ray_serve.base_url, 4)))
                for _ in range(4):
                    ingress = http.get("/info").json()["ingress"]
                    if "nova" in ingress["voices"]:
                        seen[ingress["pid"]] = ingress["voices"]["nova"]
                if len(seen) == 2:
                    break
            listed = {v["id"]: v for v in http.get("/v1/audio/voices").json()["data"]}
        assert len(seen) == 2, f"requests reached only ingress replicas {sorted(seen)}"
        assert len(set(seen.values())) == 1  # both replicas hear the same reference prompt
        assert listed["nova"]["fingerprint"] == next(iter(seen.values()))
