// csm-serve playground: POST /speak, play the streamed WAV as it arrives (Web Audio), then hand the
// finished WAV to the <audio> element (seek, replay) and the download link.
// Browsers' MediaSource cannot play WAV, so live playback decodes the PCM itself; without streaming
// support (no ReadableStream / AudioContext) the whole response is fetched as a blob instead.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).toString();

const ui = {
  form: $("speak-form"), text: $("text"), voice: $("voice"), saved: $("saved-voices"),
  maxDuration: $("max-duration"), seed: $("seed"), stream: $("stream"),
  contextFile: $("context-file"), contextText: $("context-text"), contextSpeaker: $("context-speaker"),
  apiKey: $("api-key"), speak: $("speak"), stop: $("stop"), status: $("status"), player: $("player"), download: $("download"),
};

const KEY_STORAGE = "csm-serve.api-key";  // sessionStorage: gone when the tab closes

function authHeaders(extra = {}) {
  const key = ui.apiKey.value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

let audioContext = null;   // one per page; created inside the click so autoplay rules allow it
let controller = null;     // AbortController of the request in flight
let resultUrl = null;      // object URL of the latest WAV

function setStatus(message, isError = false) {
  ui.status.textContent = message;
  ui.status.classList.toggle("error", isError);
}

function errorMessage(body, status) {
  const detail = body && body.detail !== undefined ? body.detail : body;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && d.msg ? `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}` : String(d))).join("; ");
  }
  if (typeof detail === "string" && detail) return detail;
  return `request failed with HTTP ${status}`;
}

async function failure(response) {
  const text = await response.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* plain-text error, e.g. from a proxy */ }
  const retry = response.headers.get("Retry-After");
  return errorMessage(body, response.status) + (retry ? ` (retry after ${retry} s)` : "");
}

async function loadVoices() {
  try {
    const response = await fetch(api("v1/voices"), { headers: authHeaders() });
    if (!response.ok) return;
    let voices = await response.json();
    if (!Array.isArray(voices)) voices = voices.data || voices.voices || [];
    ui.saved.replaceChildren(...voices.map((v) => {
      const option = document.createElement("option");
      option.value = `voice:${v.id}`;
      option.textContent = v.name ? `${v.name} (${v.id})` : v.id;
      return option;
    }));
  } catch (_) {
    // Saved voices are optional: the speakers still work.
  }
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function requestBody() {
  const body = { text: ui.text.value.trim(), stream: ui.stream.checked, response_format: "wav" };
  const [kind, value] = ui.voice.value.split(/:(.*)/s);
  if (kind === "voice") body.voice = value; else body.speaker = Number(value);
  if (ui.maxDuration.value) body.max_duration_ms = Number(ui.maxDuration.value);
  if (ui.seed.value !== "") body.seed = Number(ui.seed.value);
  const file = ui.contextFile.files[0];
  if (file) {
    body.context = [{
      text: ui.contextText.value.trim(),
      speaker: Number(ui.contextSpeaker.value),
      audio_b64: await readBase64(file),
    }];
  }
  return body;
}

// ---- WAV parsing: the header (fmt, data) may arrive split over several network chunks ----------------
class WavStream {
  constructor() { this.pending = new Uint8Array(0); this.format = null; this.inData = false; this.parts = []; }

  // Feed bytes; returns the new sample bytes (whole frames only) once the data chunk has begun.
  push(bytes) {
    let buf = concat(this.pending, bytes);
    if (!this.inData) {
      buf = this.parseHeader(buf);
      if (!this.inData) { this.pending = buf; return new Uint8Array(0); }
    }
    const frame = this.format.blockAlign;
    const whole = buf.length - (buf.length % frame);
    this.pending = buf.slice(whole);
    const out = buf.slice(0, whole);
    if (out.length) this.parts.push(out);
    return out;
  }

  // Parse RIFF chunks from the start of `buf`; returns the bytes after the data chunk's header, or
  // `buf` unchanged when the header is not complete yet (it is re-read on the next push; it is small).
  parseHeader(buf) {
    if (buf.length < 12) return buf;
    if (ascii(buf, 0) !== "RIFF" || ascii(buf, 8) !== "WAVE") throw new Error("the server did not send a WAV stream");
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let pos = 12;
    while (buf.length - pos >= 8) {
      const id = ascii(buf, pos);
      const size = view.getUint32(pos + 4, true);
      if (id === "data") {
        if (!this.format) throw new Error("WAV stream without a fmt chunk");
        this.inData = true;
        return buf.slice(pos + 8);
      }
      if (buf.length - pos < 8 + size) break;
      if (id === "fmt ") {
        const tag = view.getUint16(pos + 8, true);
        this.format = {
          float: tag === 3 || (tag === 0xfffe && view.getUint16(pos + 32, true) === 3),
          channels: view.getUint16(pos + 10, true),
          sampleRate: view.getUint32(pos + 12, true),
          blockAlign: view.getUint16(pos + 20, true),
          bits: view.getUint16(pos + 22, true),
        };
      }
      pos += 8 + size + (size % 2);
    }
    return buf;
  }

  // Interleaved bytes -> one Float32Array per channel.
  toChannels(bytes) {
    const { channels, bits, float } = this.format;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const step = bits / 8;
    const frames = bytes.length / (step * channels);
    const out = Array.from({ length: channels }, () => new Float32Array(frames));
    for (let i = 0; i < frames; i++) {
      for (let c = 0; c < channels; c++) {
        const at = (i * channels + c) * step;
        out[c][i] = float ? view.getFloat32(at, true) : bits === 16 ? view.getInt16(at, true) / 32768 : view.getInt32(at, true) / 2147483648;
      }
    }
    return out;
  }

  // A complete WAV file (real sizes in the header) from everything received.
  toBlob() {
    const { channels, sampleRate, blockAlign, bits, float } = this.format;
    const dataLength = this.parts.reduce((n, p) => n + p.length, 0);
    const header = new DataView(new ArrayBuffer(44));
    const put = (at, s) => [...s].forEach((ch, i) => header.setUint8(at + i, ch.charCodeAt(0)));
    put(0, "RIFF"); header.setUint32(4, 36 + dataLength, true); put(8, "WAVE");
    put(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, float ? 3 : 1, true);
    header.setUint16(22, channels, true); header.setUint32(24, sampleRate, true);
    header.setUint32(28, sampleRate * blockAlign, true); header.setUint16(32, blockAlign, true);
    header.setUint16(34, bits, true); put(36, "data"); header.setUint32(40, dataLength, true);
    return new Blob([header.buffer, ...this.parts], { type: "audio/wav" });
  }

  seconds() {
    const bytes = this.parts.reduce((n, p) => n + p.length, 0);
    return this.format ? bytes / this.format.blockAlign / this.format.sampleRate : 0;
  }
}

function ascii(buf, at) { return String.fromCharCode(buf[at], buf[at + 1], buf[at + 2], buf[at + 3]); }
function concat(a, b) {
  if (!a.length) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0); out.set(b, a.length);
  return out;
}

// ---- playback ---------------------------------------------------------------------------------------
// `position` (seconds, or a function giving them when the file is ready) is where playback starts;
// `handover` runs once the element really plays, so live playback can stop without a gap.
function showResult(blob, { play, position = 0, handover = () => {} }) {
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  ui.download.href = resultUrl;
  ui.download.classList.remove("disabled");
  ui.download.removeAttribute("aria-disabled");
  ui.player.src = resultUrl;
  if (!play) { handover(); return; }
  ui.player.addEventListener("playing", handover, { once: true });
  ui.player.addEventListener("loadedmetadata", () => {
    const at = typeof position === "function" ? position() : position;
    if (at > 0 && at < ui.player.duration) ui.player.currentTime = at;
    ui.player.play().catch((e) => { handover(); setStatus(`press play to listen (${e.message})`); });
  }, { once: true });
}

async function playStreamed(response, startedAt) {
  const reader = response.body.getReader();
  const wav = new WavStream();
  const ctx = audioContext;
  const sources = [];
  let playHead = 0;
  let liveStart = null;   // ctx time at which the first sample plays
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const bytes = wav.push(value);
    if (!bytes.length) continue;
    const channels = wav.toChannels(bytes);
    const buffer = ctx.createBuffer(channels.length, channels[0].length, wav.format.sampleRate);
    channels.forEach((data, c) => buffer.copyToChannel(data, c));
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    if (liveStart === null) {
      liveStart = ctx.currentTime + 0.05;
      playHead = liveStart;
      setStatus(`first audio after ${Math.round(performance.now() - startedAt)} ms, streaming...`);
    }
    playHead = Math.max(playHead, ctx.currentTime);
    source.start(playHead);
    playHead += buffer.duration;
    sources.push(source);
  }
  if (!wav.format) throw new Error("the stream ended before any audio");
  // Hand over to the <audio> element (seek, replay, download) at the point live playback has reached;
  // live playback goes on until the element actually plays, so there is no silent gap.
  const total = wav.seconds();
  const heard = () => (liveStart === null ? 0 : Math.max(0, ctx.currentTime - liveStart));
  const stopLive = () => sources.forEach((s) => { try { s.stop(); } catch (_) { /* already ended */ } });
  const remaining = total - heard();
  showResult(wav.toBlob(), { play: remaining > 0.05, position: () => heard() + 0.02, handover: stopLive });
  return total;
}

async function speak(event) {
  event.preventDefault();
  if (!ui.text.value.trim()) { setStatus("type some text first", true); return; }
  const streaming = ui.stream.checked && "ReadableStream" in window && (window.AudioContext || window.webkitAudioContext);
  if (streaming && !audioContext) audioContext = new (window.AudioContext || window.webkitAudioContext)();
  if (streaming && audioContext.state === "suspended") audioContext.resume();
  ui.player.pause();
  controller = new AbortController();
  ui.speak.disabled = true; ui.stop.disabled = false;
  setStatus("generating...");
  const startedAt = performance.now();
  try {
    const body = await requestBody();
    body.stream = Boolean(streaming);
    const response = await fetch(api("speak"), {
      method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) { setStatus(await failure(response), true); return; }
    let seconds;
    if (streaming && response.body) {
      seconds = await playStreamed(response, startedAt);
    } else {
      const blob = await response.blob();
      showResult(blob, { play: true });
      seconds = null;
    }
    const took = ((performance.now() - startedAt) / 1000).toFixed(2);
    setStatus(seconds === null ? `done in ${took} s` : `${seconds.toFixed(2)} s of audio in ${took} s`);
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : `error: ${e.message}`, e.name !== "AbortError");
  } finally {
    ui.speak.disabled = false; ui.stop.disabled = true; controller = null;
  }
}

async function showModelNotice() {
  // The development model speaks noise: say so before anyone judges the audio.
  try {
    const response = await fetch(api("info"), { headers: authHeaders() });
    if (!response.ok) return;
    const info = await response.json();
    const notice = $("model-notice");
    if (info.random_weights) {
      notice.textContent = `Model "${info.model}": ${info.notice || "random weights, the audio is noise"}.`;
      notice.hidden = false;
    }
  } catch (_) {
    // /info is informative only.
  }
}

ui.form.addEventListener("submit", speak);
ui.stop.addEventListener("click", () => controller && controller.abort());
ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
ui.apiKey.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
  loadVoices();
  showModelNotice();
});
loadVoices();
showModelNotice();
