"""Response cache: deterministic or opted-in requests only, keyed by everything that changes the audio."""


import pytest

from serve_app.api.cache import CachedResponse, ResponseCache
from tests.support_api import FakeEngine, make_client, on_event_loop, wav_b64


def test_seeded_speak_hit_is_byte_identical(client, engine) -> None:
    body = {"text": "Cache me if you can.", "seed": 42}
    miss = client.post("/speak", json=body)
    hit = client.post("/speak", json=body)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
    assert hit.content == miss.content
    assert hit.headers["content-type"] == miss.headers["content-type"]
    assert hit.headers["content-disposition"] == miss.headers["content-disposition"]
    assert len(engine.requests) == 1


def test_unseeded_requests_bypass_unless_opted_in(client, engine) -> None:
    assert client.post("/speak", json={"text": "Fresh"}).headers["x-cache"] == "bypass"
    assert client.post("/speak", json={"text": "Fresh"}).headers["x-cache"] == "bypass"
    assert client.post("/speak", json={"text": "Fresh", "cache": True}).headers["x-cache"] == "miss"
    assert client.post("/speak", json={"text": "Fresh", "cache": True}).headers["x-cache"] == "hit"
    assert len(engine.requests) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"speaker": 0},
        {"text": "Cache me if you can!"},
        {"temperature": 0.5},
        {"top_k": 5},
        {"max_duration_ms": 5000},
        {"response_format": "flac"},
        {"sample_rate": 16000},
        {"output_format": "mp3_44100_64"},
        {"speed": 1.5},
        {"quality_check": True},
        {"context": [{"text": "ctx", "speaker": 0, "audio_b64": wav_b64(0.2)}]},
    ],
)
def test_anything_that_changes_audio_changes_the_key(client, change) -> None:
    base = {"text": "Cache me if you can.", "seed": 42}
    client.post("/speak", json=base)
    assert client.post("/speak", json={**base, **change}).headers["x-cache"] == "miss"


def test_a_keys_cached_answers_are_its_own(tmp_path) -> None:
    """Where the server takes API keys, a hit would tell one key what another asked for."""
    client = make_client(tmp_path, FakeEngine(), api_keys="key-one,key-two")
    one, two = ({"authorization": f"Bearer {key}"} for key in ("key-one", "key-two"))
    body = {"text": "My PIN is four three two one.", "seed": 7}
    assert client.post("/speak", json=body, headers=one).headers["x-cache"] == "miss"
    assert client.post("/speak", json=body, headers=two).headers["x-cache"] == "miss"
    assert client.post("/speak", json=body, headers=one).headers["x-cache"] == "hit"
    assert client.post("/speak", json=body, headers=two).headers["x-cache"] == "hit"


def test_normalize_changes_the_key_of_what_the_model_hears_besides_the_text(client) -> None:
    """The text here reads the same either way, but the context's transcript (and a reference's) does
    not: the engine is given a different prompt, so the cached audio must not be reused."""
    turn = {"text": "Dr. Smith paid $5.", "speaker": 0, "audio_b64": wav_b64(0.2)}
    base = {"text": "Hello there.", "seed": 31, "context": [turn]}
    assert client.post("/speak", json={**base, "normalize": False}).headers["x-cache"] == "miss"
    assert client.post("/speak", json={**base, "normalize": True}).headers["x-cache"] == "miss"
    clone = {"text": "Hi", "reference_audio_b64": wav_b64(0.5), "reference_text": "It costs $5.", "seed": 3}
    assert client.post("/clone_voice", json={**clone, "normalize": False}).headers["x-cache"] == "miss"
    assert client.post("/clone_voice", json={**clone, "normalize": True}).headers["x-cache"] == "miss"


def test_one_format_spelled_two_ways_is_one_key(client) -> None:
    base = {"text": "Cache me if you can.", "seed": 42}
    client.post("/speak", json={**base, "response_format": "pcm", "sample_rate": 16000})
    assert client.post("/speak", json={**base, "output_format": "pcm_16000"}).headers["x-cache"] == "hit"


def test_normalized_text_is_the_key(client) -> None:
    client.post("/speak", json={"text": "Pay $5 now", "seed": 1})
    assert client.post("/speak", json={"text": "Pay  $5   now", "seed": 1}).headers["x-cache"] == "hit"


def test_model_revision_is_part_of_the_key(tmp_path) -> None:
    class Revised(FakeEngine):
        async def info(self):
            return {**await super().info(), "revision": "rev-2"}

    body = {"text": "Same words", "seed": 5}
    first = make_client(tmp_path, FakeEngine())
    first.post("/speak", json=body)
    cache = first.app.state.services.cache
    second = make_client(tmp_path, Revised())
    second.app.state.services.cache = cache  # shared cache, new model revision
    assert second.post("/speak", json=body).headers["x-cache"] == "miss"


def test_streams_and_sessions_are_never_cached(client) -> None:
    assert (
        client.post("/speak", json={"text": "Hi", "seed": 1, "stream": True}).headers["x-cache"] == "bypass"
    )
    r = client.post("/contextual_speak", json={"text": "Hi", "seed": 1, "session_id": "s"})
    assert r.headers["x-cache"] == "bypass"


def test_openai_and_clone_cache_seeded_requests(client) -> None:
    speech = {"model": "tts-1", "input": "Hello", "voice": "nova", "seed": 3}
    assert client.post("/v1/audio/speech", json=speech).headers["x-cache"] == "miss"
    assert client.post("/v1/audio/speech", json=speech).headers["x-cache"] == "hit"
    assert client.post("/v1/audio/speech", json={**speech, "speed": 1.5}).headers["x-cache"] == "miss"
    assert (
        client.post("/v1/audio/speech", json={**speech, "max_duration_ms": 800}).headers["x-cache"] == "miss"
    )
    clone = {"text": "Hi", "reference_audio_b64": wav_b64(0.5), "reference_text": "ref", "seed": 3}
    assert client.post("/clone_voice", json=clone).headers["x-cache"] == "miss"
    assert client.post("/clone_voice", json=clone).headers["x-cache"] == "hit"


def test_seeded_conversation_is_cached(client, engine) -> None:
    body = {"turns": [{"speaker": 0, "text": "Hi"}, {"speaker": 1, "text": "Hello"}], "seed": 4}
    miss, hit = client.post("/conversation", json=body), client.post("/conversation", json=body)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == (
        "miss",
        "hit",
    ) and hit.content == miss.content
    assert len(engine.requests) == 2
    changed = {
        **body,
        "turns": [{"speaker": 0, "text": "Hi", "pause_ms": 900}, {"speaker": 1, "text": "Hello"}],
    }
    assert client.post("/conversation", json=changed).headers["x-cache"] == "miss"


def test_cache_is_bounded_by_bytes_lru() -> None:
    cache = ResponseCache(max_bytes=250)
    for key in "abc":
        cache.put(key, CachedResponse(b"x" * 100, "audio/wav"))
    assert cache.get("a") is None and cache.get("b") and cache.get("c")
    cache.get("b")  # b most recently used → c is evicted next
    cache.put("d", CachedResponse(b"y" * 100, "audio/wav"))
    assert cache.get("c") is None and cache.get("b") and cache.get("d")
    cache.put("huge", CachedResponse(b"z" * 1000, "audio/wav"))  # over the bound: not stored
    assert cache.get("huge") is None and len(cache) == 2


def test_disabled_cache_bypasses(tmp_path) -> None:
    client = make_client(tmp_path, cache_max_bytes=0)
    assert client.post("/speak", json={"text": "Hi", "seed": 1}).headers["x-cache"] == "bypass"


def _concurrently(app, bodies: list[dict]) -> list:  # type: ignore[no-untyped-def]
    import asyncio

    import httpx

    async def scenario() -> list:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/speak", json=body) for body in bodies))

    return asyncio.run(scenario())


def test_identical_requests_at_once_share_one_generation_and_its_bytes(tmp_path) -> None:
    from serve_app.api.app import create_app
    from serve_app.api.settings import ApiSettings

    engine = FakeEngine(delay_s=0.2)
    app = create_app(engine, ApiSettings(voices_dir=tmp_path / "voices"))
    body = {"text": "Everyone asks for this at once.", "seed": 5}
    responses = _concurrently(app, [body] * 6 + [{**body, "seed": 6}])
    assert [r.status_code for r in responses] == [200] * 7
    assert len(engine.requests) == 2  # one per distinct request, not one per client
    assert len({r.content for r in responses[:6]}) == 1
    assert sorted(r.headers["x-cache"] for r in responses[:6]) == ["hit"] * 5 + ["miss"]
    assert responses[6].content != responses[0].content


def test_a_shared_generation_goes_on_for_those_still_waiting() -> None:
    import asyncio

    async def scenario() -> None:
        cache = ResponseCache(max_bytes=1000)
        made = []

        async def produce() -> CachedResponse:
            made.append(1)
            await asyncio.sleep(0.1)
            return CachedResponse(b"audio", "audio/wav")

        first = asyncio.ensure_future(cache.produce_once("k", produce))
        second = asyncio.ensure_future(cache.produce_once("k", produce))
        await asyncio.sleep(0.01)
        first.cancel()  # its client left: the other still gets the audio, made once
        assert await second == (CachedResponse(b"audio", "audio/wav"), True)
        assert made == [1] and cache.get("k") is not None
        alone = asyncio.ensure_future(cache.produce_once("j", produce))
        await asyncio.sleep(0.01)
        alone.cancel()  # nobody waits any more: the work stops
        await asyncio.sleep(0.15)
        assert cache.get("j") is None

    asyncio.run(scenario())


def test_uploaded_audio_is_hashed_only_for_a_cacheable_request_and_off_the_event_loop(client, monkeypatch) -> None:
    """A cache key over a reference recording or context turns hashes megabytes of base64 (tens of ms):
    never for a request that is not cached, and in the thread pool for one that is."""
    from serve_app.api import cache

    hashed: list[bool] = []  # each hash of over a MB: made on the event loop?
    sha256 = cache.hashlib.sha256

    def recording(data: bytes = b"", **kwargs):
        if len(data) > 1_000_000:
            hashed.append(on_event_loop())
        return sha256(data, **kwargs)

    monkeypatch.setattr(cache.hashlib, "sha256", recording)
    body = {"text": "Hello.", "reference_text": "A reference.", "reference_audio_b64": wav_b64(20.0)}
    assert client.post("/clone_voice", json=body).headers["x-cache"] == "bypass"
    assert hashed == []
    assert client.post("/clone_voice", json={**body, "seed": 3}).headers["x-cache"] == "miss"
    assert client.post("/clone_voice", json={**body, "seed": 3}).headers["x-cache"] == "hit"
    assert hashed == [False, False]
