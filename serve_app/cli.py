"""`csm-serve`: start the service, speak, batch-synthesize files, manage saved voices.

    csm-serve serve --preset tiny-random               # in-process uvicorn, for development
    csm-serve serve --config configs/serve/local.yaml  # Ray Serve, like `serve run`
    csm-serve speak "Hello there." -o hello.wav --stream
    my-llm | csm-serve speak --ws - -o reply.wav       # speaks stdin as it arrives
    csm-serve batch lines.txt -o out/
    csm-serve voices add narrator ref.wav --transcript "What the recording says."

Client commands talk to `--url` (or $CSM_SERVE_URL); server errors print the server's message and
exit with status 1.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import click

from serve_app.client import DEFAULT_URL, TTSClient, TTSError

RETRIES = 3
"""Overloaded (503) and rate-limited (429) answers are retried this many times after Retry-After."""


class _Group(click.Group):
    """Turns the client's typed errors into one clean line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TTSError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.option("--url", envvar="CSM_SERVE_URL", default=DEFAULT_URL, show_default=True,
              help="Base URL of the service (env CSM_SERVE_URL).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds to wait for one answer.")
@click.option("--api-key", envvar="CSM_API_KEY", default=None, show_default=False,
              help="API key, when the server requires one (env CSM_API_KEY).")
@click.pass_context
def cli(ctx: click.Context, url: str, timeout: float, api_key: str | None) -> None:
    """Sesame CSM-1B text-to-speech service and its client."""
    ctx.obj = {"url": url, "timeout": timeout, "api_key": api_key}


def _client(ctx: click.Context, retries: int = RETRIES) -> TTSClient:
    client = TTSClient(ctx.obj["url"], timeout=ctx.obj["timeout"], api_key=ctx.obj["api_key"], max_retries=retries)
    ctx.call_on_close(client.close)
    return client


# ---------------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Ray Serve config to run (as `serve run CONFIG`).")
@click.option("--preset", help="Engine preset to serve in-process with uvicorn (e.g. tiny-random).")
@click.option("--device", help="Engine device for --preset (cpu, cuda); the engine chooses by default.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address for --preset.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port for --preset.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Log level for --preset.")
@click.option("--ingress", type=click.Choice(["auto", "haproxy", "proxy"]), default="auto", show_default=True,
              help="HTTP ingress Ray starts for --config: HAProxy (fastest measured; needs csm-serve[haproxy]) "
                   "or Ray's Python proxy. auto: HAProxy unless the config listens on loopback only, Ray is "
                   "already running elsewhere (RAY_ADDRESS), RAY_SERVE_ENABLE_HA_PROXY is set, or no binary.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds a stop (SIGTERM, Ctrl-C) waits for in-flight requests and streams. "
                   "Default: the config's longest graceful_shutdown_timeout_s, plus Ray's direct-ingress "
                   "draining period (30 s) and 10 (Ray); 30 (--preset).")
def serve(config_path: str | None, preset: str | None, device: str | None, host: str, port: int,
          log_level: str, ingress: str, drain_timeout: float | None) -> None:
    """Start the service: Ray Serve from --config, one process with --preset, or (neither) Ray
    Serve with the config this machine can run: CSM-1B on its GPUs, else the tiny random model.

    SIGTERM (as a container stop sends) or Ctrl-C drains: requests and streams in flight finish,
    up to the drain timeout, new ones are refused, then the server exits with status 0."""
    if config_path and preset:
        raise click.UsageError("give at most one of --config or --preset")
    if not preset:  # a Ray Serve config: its http_options and logging_config decide these
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in ("host", "port", "log_level", "device")
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --preset only; a Serve config sets them "
                                   "(http_options.host/port, logging_config, args.device)")
    if not config_path and not preset:
        config_path = str(choose_local_config())
    if config_path:
        sys.exit(run_serve_config(config_path, drain_timeout, ingress))
    run_preset(preset, device=device, host=host, port=port, log_level=log_level,
               drain_timeout_s=PRESET_DRAIN_TIMEOUT_S if drain_timeout is None else drain_timeout)


def choose_local_config() -> Path:
    """Pick and write this machine's config; say loudly when it is the random model."""
    import tempfile

    from serve_app.deploy.local import choose, write_config

    choice = choose()
    path = write_config(choice, Path(tempfile.mkdtemp(prefix="csm-serve-")))
    banner = f"csm-serve: {choice.reason}\ncsm-serve: running {path}"
    click.secho(banner, err=True, fg="yellow" if choice.random_weights else "green", bold=choice.random_weights)
    return path


def run_serve_config(config_path: str, drain_timeout_s: float | None = None, ingress: str = "auto") -> int:
    """`serve run CONFIG` in this process, with the package importable by Ray's workers, the HTTP
    ingress chosen by `serve_app.deploy.ingress`, and a stop that drains (`serve_app.deploy.runner`);
    returns the exit status."""
    import yaml

    from serve_app.deploy.ingress import apply_ingress, choose_ingress, haproxy_binary

    try:
        choice = choose_ingress(ingress, yaml.safe_load(Path(config_path).read_text()) or {}, os.environ, haproxy_binary())
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    apply_ingress(choice)
    click.echo(f"csm-serve: HTTP ingress: {choice.ingress} ({choice.reason})", err=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        # Ray workers import `serve_app` by name; a source checkout is not on their path otherwise.
        os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    import logging

    from serve_app.deploy.runner import run_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s csm-serve: %(message)s")
    return run_config(config_path, drain_timeout_s)


def build_preset_app(preset: str, device: str | None = None) -> Any:
    """The API app (`create_app`: metrics and the playground included) over an in-process engine."""
    from serve_app.api.app import create_app
    from serve_app.engine.engine import Engine
    from serve_app.observability.metrics import record_engine_step

    engine = Engine.from_preset(preset, on_step=record_engine_step, **({"device": device} if device else {}))
    return create_app(engine)


PRESET_DRAIN_TIMEOUT_S = 30.0


def preset_server_config(app: Any, *, host: str, port: int, log_level: str,
                         drain_timeout_s: float = PRESET_DRAIN_TIMEOUT_S) -> Any:
    """uvicorn's config for `app` served by `--preset`. Access log off: the app logs each request
    once itself (csm_serve.access, with its request id). Proxy headers off: a client's address (what
    a per-address rate limit counts) is its connection's, not an X-Forwarded-For any local client
    may set (uvicorn trusts 127.0.0.1's by default)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, proxy_headers=False,
                          log_config=None, access_log=False, timeout_graceful_shutdown=drain_timeout_s)


def run_preset(preset: str, *, device: str | None, host: str, port: int, log_level: str,
               drain_timeout_s: float = PRESET_DRAIN_TIMEOUT_S) -> None:
    """uvicorn in this process. On SIGTERM/SIGINT uvicorn stops accepting, lets requests in flight
    finish (at most `drain_timeout_s`) and returns; it then re-raises the signal, which the no-op
    handlers installed here absorb, so a drained stop exits with status 0."""
    import signal

    import uvicorn

    from serve_app.engine.engine import freeze_built_objects, lower_switch_interval
    from serve_app.observability.logs import configure_logging

    configure_logging(log_level.upper())
    lower_switch_interval()  # this process hosts the engine's loop thread
    app = build_preset_app(preset, device)
    freeze_built_objects()  # ... and what it built lives as long as the process
    config = preset_server_config(app, host=host, port=port, log_level=log_level,
                                  drain_timeout_s=drain_timeout_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # restored by uvicorn after its own handling, then raised
    uvicorn.Server(config).run()


# ---------------------------------------------------------------------------------------------------
# speak
# ---------------------------------------------------------------------------------------------------
def finish_streamed_wav(path: Path) -> None:
    """Write the real sizes into a streamed WAV's header (sent as 0xFFFFFFFF while the length was unknown)."""
    with path.open("r+b") as f:
        head = f.read(4096)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size = f.seek(0, os.SEEK_END)
        pos = 12
        while pos + 8 <= len(head):
            chunk_id = head[pos : pos + 4]
            (chunk_size,) = struct.unpack_from("<I", head, pos + 4)
            if chunk_id == b"data":
                f.seek(4)
                f.write(struct.pack("<I", size - 8))
                f.seek(pos + 4)
                f.write(struct.pack("<I", size - pos - 8))
                return
            pos += 8 + chunk_size + (chunk_size % 2)


def _write(chunks: Iterable[bytes], out: BinaryIO) -> tuple[int, float | None]:
    """Copy chunks to `out` as they come; returns bytes written and seconds to the first byte."""
    start = time.perf_counter()
    first: float | None = None
    total = 0
    for chunk in chunks:
        if first is None and chunk:
            first = time.perf_counter() - start
        out.write(chunk)
        out.flush()
        total += len(chunk)
    return total, first


@cli.command()
@click.argument("text")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the audio ('-' for stdout).")
@click.option("--speaker", type=click.IntRange(0, 1), default=0, show_default=True)
@click.option("--voice", help="A voice instead of a speaker: built-in (alloy, nova, ...), a saved voice's id, "
                              "or its name where no other saved voice has it (see `voices list`).")
@click.option("--stream/--no-stream", default=False, help="Write audio as it is generated.")
@click.option("--max-duration-ms", type=click.IntRange(min=1),
              help="Longest audio. Default: the server sizes it for the text.")
@click.option("--seed", type=int, help="Seed for reproducible audio.")
@click.option("--format", "response_format", default="wav", show_default=True,
              help="wav, pcm, flac, mp3, opus, aac, ulaw or alaw, or a codec_rate[_kbps] name "
                   "such as mp3_44100_128 or ulaw_8000.")
@click.option("--sample-rate", type=click.Choice(["8000", "16000", "22050", "24000", "44100", "48000"]),
              help="Output sample rate in Hz (default: the format's, 24000; 8000 for ulaw/alaw).")
@click.option("--speed", type=click.FloatRange(0.25, 4.0), default=1.0, show_default=True,
              help="Speech rate, pitch kept.")
@click.option("--context-audio", type=click.Path(exists=True, dir_okay=False),
              help="A recording to continue from (with --context-text).")
@click.option("--context-text", default="", help="What --context-audio says.")
@click.option("--context-speaker", type=click.IntRange(0, 1), default=0, show_default=True)
@click.option("--ws", is_flag=True,
              help="Over the WebSocket: with TEXT '-', stdin is sent as it arrives and speech starts at the "
                   "first sentence (any streamed format; not flac).")
@click.pass_context
def speak(ctx: click.Context, text: str, output: str, speaker: int, voice: str | None, stream: bool,
          max_duration_ms: int | None, seed: int | None, response_format: str, sample_rate: str | None,
          speed: float, context_audio: str | None, context_text: str, context_speaker: int,
          ws: bool) -> None:
    """Synthesize TEXT ('-' reads it from stdin) into an audio file."""
    _check_output(output)
    response_format = response_format.strip().lower()
    if stream and not ws and response_format.split("_")[0] == "flac":
        # A streamed FLAC's header cannot say its length, and libsndfile refuses such a file.
        raise click.UsageError("flac is written whole: drop --stream, or stream another format")
    if ws:
        if context_audio:
            raise click.UsageError("--context-audio cannot be combined with --ws")
        speak_over_socket(ctx, text, output, speaker=speaker, voice=voice, seed=seed, speed=speed,
                          max_duration_ms=max_duration_ms, fmt=response_format, sample_rate=sample_rate)
        return
    if text == "-":
        text = sys.stdin.read().strip()
    context = ([{"text": context_text, "speaker": context_speaker, "audio": context_audio}]
               if context_audio else None)
    named = "_" in response_format  # an ElevenLabs-style output_format name
    options: dict[str, Any] = {
        "context": context, "seed": seed, "voice": voice,
        "response_format": None if named else response_format,
        **({"output_format": response_format} if named else {}),
        **({"sample_rate": int(sample_rate)} if sample_rate else {}),
        **({"speed": speed} if speed != 1.0 else {}),
    }
    client = _client(ctx)
    chunks = (client.stream_speak(text, speaker, max_duration_ms, **options) if stream
              else iter([client.speak(text, speaker, max_duration_ms, **options)]))
    _save(chunks, output, streamed_wav=stream, report_latency=stream)


def stdin_pieces(stream: BinaryIO | None = None) -> Iterable[str]:
    """Text from stdin as it arrives (whatever the pipe holds, not line by line), UTF-8 decoded."""
    import codecs

    fd = (stream or sys.stdin.buffer).fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(fd, 4096):
        if text := decoder.decode(chunk):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


def speak_over_socket(ctx: click.Context, text: str, output: str, *, speaker: int, voice: str | None,
                      seed: int | None, max_duration_ms: int | None, fmt: str,
                      sample_rate: str | None, speed: float = 1.0) -> None:
    from serve_app.audio.encode import wav_stream_header
    from serve_app.audio.formats import OutputFormat

    try:
        out = (OutputFormat.parse(fmt) if "_" in fmt
               else OutputFormat.default(fmt, int(sample_rate) if sample_rate else None))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if out.codec == "flac":
        raise click.UsageError("--ws streams audio as it is made: flac cannot be streamed")
    if sample_rate and int(sample_rate) != out.sample_rate:
        raise click.UsageError(f"--sample-rate {sample_rate} contradicts --format {fmt} ({out.sample_rate} Hz)")
    wire = OutputFormat("pcm", out.sample_rate) if out.codec == "wav" else out  # the header is written here
    pieces = stdin_pieces() if text == "-" else [text]
    options: dict[str, Any] = {"speaker": speaker, "voice": voice, "seed": seed,
                               "max_duration_ms": max_duration_ms, "output_format": wire.name,
                               "speed": speed if speed != 1.0 else None}  # None: not sent
    header = wav_stream_header(out.sample_rate) if out.codec == "wav" else b""
    chunks = _client(ctx, retries=0).speak_streamed(pieces, **options)
    _save(chunks, output, header=header, streamed_wav=bool(header), report_latency=True)


def _check_output(output: str) -> None:
    """Refuse an output file whose folder does not exist before any audio is generated."""
    if output != "-" and not Path(output).resolve().parent.is_dir():
        raise click.UsageError(f"cannot write {output}: its folder does not exist")


def _save(
    chunks: Iterable[bytes],
    output: str,
    *,
    header: bytes = b"",
    streamed_wav: bool = False,
    report_latency: bool = False,
) -> None:
    """Write `header` then the audio chunks to stdout ("-") or, through a `.part` file that replaces
    `output` only when complete, to a file; a streamed WAV gets its final lengths filled in."""
    if output == "-":
        sys.stdout.buffer.write(header)
        _write(chunks, sys.stdout.buffer)
        return
    path = Path(output)
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("wb") as f:
            f.write(header)
            size, first = _write(chunks, f)
        if streamed_wav:
            finish_streamed_wav(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    latency = f", first audio after {first:.2f} s" if report_latency and first is not None else ""
    click.echo(f"wrote {path} ({size + len(header)} bytes{latency})", err=True)


# ---------------------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------------------
@cli.command()
@click.argument("lines_file", type=click.File("r", encoding="utf-8"))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Directory for 0001.wav, 0002.wav, ... and manifest.jsonl.")
@click.option("--speaker", type=click.IntRange(0, 1), default=0, show_default=True)
@click.option("--max-duration-per-text-ms", type=int, default=10000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 10), default=10, show_default=True,
              help="Texts per /batch_speak request (the server takes at most 10).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@click.pass_context
def batch(ctx: click.Context, lines_file: Any, output_dir: str, speaker: int, max_duration_per_text_ms: int,
          batch_size: int, progress: bool) -> None:
    """Synthesize every non-empty line of LINES_FILE ('-' for stdin) into its own WAV."""
    from tqdm import tqdm

    texts = [line.strip() for line in lines_file if line.strip()]
    if not texts:
        raise click.UsageError("no text lines to synthesize")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    client = _client(ctx)
    width = max(4, len(str(len(texts))))
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as manifest, \
            tqdm(total=len(texts), unit="text", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(texts), batch_size):
            group = texts[start : start + batch_size]
            wavs = client.batch_speak(group, speaker, max_duration_per_text_ms)
            for i, (text, wav) in enumerate(zip(group, wavs), start + 1):
                name = f"{i:0{width}d}.wav"
                (out / name).write_bytes(wav)
                manifest.write(json.dumps({"file": name, "text": text}, ensure_ascii=False) + "\n")
            bar.update(len(group))
    click.echo(f"wrote {len(texts)} files to {out}", err=True)


# ---------------------------------------------------------------------------------------------------
# voices
# ---------------------------------------------------------------------------------------------------
@cli.group()
def voices() -> None:
    """Saved voices: a reference recording kept on the server and used by id."""


@voices.command("add")
@click.argument("name")
@click.argument("audio", type=click.Path(exists=True, dir_okay=False))
@click.option("--transcript", required=True, help="What the recording says.")
@click.option("--speaker", type=click.IntRange(0, 1), default=0, show_default=True,
              help="CSM's speaker the voice is spoken as.")
@click.pass_context
def voices_add(ctx: click.Context, name: str, audio: str, transcript: str, speaker: int) -> None:
    """Save AUDIO as voice NAME; prints the new voice id."""
    voice = _client(ctx).add_voice(name, audio, transcript, speaker)
    click.echo(voice["id"])


@voices.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON.")
@click.pass_context
def voices_list(ctx: click.Context, as_json: bool) -> None:
    """List saved voices (id and name)."""
    items = _client(ctx).list_voices()
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for voice in items:
        click.echo(f"{voice['id']}\t{voice.get('name', '')}")


@voices.command("rm")
@click.argument("voice_ids", nargs=-1, required=True)
@click.pass_context
def voices_rm(ctx: click.Context, voice_ids: tuple[str, ...]) -> None:
    """Delete saved voices by id."""
    client = _client(ctx)
    for voice_id in voice_ids:
        client.delete_voice(voice_id)
        click.echo(f"deleted {voice_id}", err=True)


# ---------------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------------
@cli.command()
@click.pass_context
def health(ctx: click.Context) -> None:
    """Print the service's health (exit 1 while it cannot serve)."""
    click.echo(json.dumps(_client(ctx, retries=0).health()))


@cli.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Print model, revision and limits."""
    click.echo(json.dumps(_client(ctx).info(), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `csm-serve` script."""
    cli.main(args=argv, prog_name="csm-serve")


if __name__ == "__main__":
    main()
