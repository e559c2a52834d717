// csm-serve playground: speak (streamed WAV played live while its waveform is drawn), build
// conversations, manage saved voices, and see what each run took.
//
// Every run reads its WAV response the same way, chunk by chunk: the waveform grows as samples
// arrive; streamed /speak also plays them at once through Web Audio. When the response is complete
// it goes to the <audio> element (seek, replay) and the download link; live playback hands over to
// the element where it has got to, without a gap. Browsers' MediaSource cannot play WAV, hence the
// hand-made PCM path.
//
// Unstreamed speech and conversations can ask for another format (MP3, Opus, FLAC, AAC): that file
// comes whole, goes to the element and the download as sent, and its waveform is drawn once the
// browser has decoded it. Streamed speech stays WAV, the format live playback reads.

import { ApiError, call, rememberKey } from "./api.js";
import { ConversationBuilder } from "./conversation.js";
import { LivePlayer } from "./live.js";
import { RunLog, formatMs } from "./runs.js";
import { VoiceManager } from "./voices.js";
import { WavStream } from "./wav.js";
import { Waveform } from "./waveform.js";

const $ = (id) => document.getElementById(id);

const ui = {
  form: $("speak-form"), text: $("text"), voice: $("voice"), saved: $("saved-voices"),
  builtin: $("builtin-voices"),
  speed: $("speed"), speedValue: $("speed-value"), maxDuration: $("max-duration"), seed: $("seed"),
  format: $("format"), formatLabel: $("format-label"),
  stream: $("stream"), contextFile: $("context-file"), contextText: $("context-text"),
  contextSpeaker: $("context-speaker"), speak: $("speak"), stop: $("stop"), status: $("status"),
  player: $("player"), download: $("download"), outputLabel: $("output-label"),
  addTurn: $("add-turn"), generateConversation: $("generate-conversation"),
};

const runs = new RunLog();
const waveform = new Waveform($("waveform"), { onSeek: seek });
const conversation = new ConversationBuilder($("turns"), $("turn-template"));
const voices = new VoiceManager({
  onList: fillVoiceSelect,
  onUse: (voice) => { ui.voice.value = `voice:${voice.id}`; ui.text.focus(); },
  onPreview: (voice) => run({
    kind: "preview", voiceLabel: voice.name, path: `v1/voices/${encodeURIComponent(voice.id)}/preview`,
    body: { response_format: "wav", speed: speed() }, name: "preview",
  }),
});

let audioContext = null;   // one per page: plays streams (resumed inside a click, as autoplay rules
                           // ask) and decodes files to draw them
let controller = null;     // AbortController of the run in flight
let live = null;           // LivePlayer of the run being streamed, until the element takes over
let resultUrl = null;      // object URL of the latest audio file

// The formats offered, by response_format: the type the file is played and downloaded as. Opus comes
// in Ogg (the server says audio/opus, OpenAI's name). The API's pcm, ulaw and alaw are raw samples
// that no browser plays.
const FORMATS = { wav: "audio/wav", mp3: "audio/mpeg", opus: "audio/ogg", flac: "audio/flac", aac: "audio/aac" };

function setStatus(message, isError = false) {
  ui.status.textContent = message;
  ui.status.classList.toggle("error", isError);
}

const speed = () => Number(ui.speed.value);
const DEFAULT_VOICE = "speaker:1";  // the API's default speaker
const streams = () => ui.stream.checked && "ReadableStream" in window && Boolean(window.AudioContext || window.webkitAudioContext);

// Streamed speech is WAV: the format applies to unstreamed speech and conversations, so with Stream on
// the select is disabled (still showing the format conversations get) and says why.
function showFormatScope() {
  const streamed = streams();
  ui.format.disabled = streamed;
  const why = streamed ? "Streamed speech is WAV, played as it arrives: turn Stream off for another format. Conversations use this one." : "";
  ui.formatLabel.title = ui.format.title = why;  // the label too: a disabled control may show no tooltip
}

function fillVoiceGroup(group, list) {
  const selected = ui.voice.value;
  const names = list.map((v) => v.name || v.id);
  group.replaceChildren(...list.map((v, i) => {
    const option = document.createElement("option");
    option.value = `voice:${v.id}`;
    // Names need not be unique: a repeated one shows the start of its id.
    option.textContent = names.indexOf(names[i]) !== names.lastIndexOf(names[i]) ? `${names[i]} (${v.id.slice(0, 8)})` : names[i];
    return option;
  }));
  if ([...ui.voice.options].some((o) => o.value === selected)) {
    ui.voice.value = selected;
  } else if (selected.startsWith("voice:")) {  // the selected voice is gone: back to the default, saying so
    ui.voice.value = DEFAULT_VOICE;
    setStatus("the selected voice no longer exists: back to Speaker 1", true);
  }
}

function fillVoiceSelect(list) {
  fillVoiceGroup(ui.saved, list);
}

// The named built-in voices (alloy, nova, ...); "0" and "1" are the speakers above, pinned.
async function fillBuiltinVoices() {
  try {
    const body = await (await call("v1/audio/voices")).json();
    fillVoiceGroup(ui.builtin, (body.data || []).filter((v) => v.type === "builtin" && !/^[01]$/.test(v.id)));
  } catch (_) {
    // Optional (or it needs a key not entered yet): the speakers still work.
  }
}

function selectedVoiceLabel() {
  return ui.voice.selectedOptions[0] ? ui.voice.selectedOptions[0].textContent : "";
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function speakBody(streaming) {
  const body = { text: ui.text.value.trim(), stream: streaming, response_format: streaming ? "wav" : ui.format.value, speed: speed() };
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

// ---- playback ---------------------------------------------------------------------------------------
// `position` (seconds, or a function giving them when the file is ready) is where playback starts;
// `handover` runs once the element really plays, so live playback can stop without a gap.
function clearResult() {
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = null;
  ui.player.removeAttribute("src");
  ui.player.load();
  ui.download.removeAttribute("href");
  ui.download.classList.add("disabled");
  ui.download.setAttribute("aria-disabled", "true");
}

function showResult(blob, filename, { position = 0, handover = () => {}, autoplay = true } = {}) {
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  ui.download.href = resultUrl;
  ui.download.download = filename;
  ui.download.textContent = `Download ${filename.split(".").pop().toUpperCase()}`;
  ui.download.classList.remove("disabled");
  ui.download.removeAttribute("aria-disabled");
  ui.player.src = resultUrl;
  ui.player.addEventListener("playing", handover, { once: true });
  ui.player.addEventListener("loadedmetadata", () => {
    const at = typeof position === "function" ? position() : position;
    if (at >= ui.player.duration - 0.05) {  // live playback has played it all: show it as played
      ui.player.currentTime = ui.player.duration;
      handover();
      return;
    }
    if (at > 0) ui.player.currentTime = at;
    if (!autoplay) return;
    ui.player.play().catch((e) => { handover(); setStatus(`press play to listen (${e.message})`); });
  }, { once: true });
}

function seek(seconds) {
  if (ui.player.src && Number.isFinite(ui.player.duration)) {
    ui.player.currentTime = Math.min(seconds, ui.player.duration);
    waveform.setPosition(ui.player.currentTime);
  }
}

// The playhead: live playback's position while streaming, then the element's.
function followPlayback() {
  waveform.setPosition(live ? live.position() : ui.player.currentTime || 0);
  requestAnimationFrame(followPlayback);
}

function pageAudioContext() {
  if (!audioContext) audioContext = new (window.AudioContext || window.webkitAudioContext)();
  return audioContext;
}

// A whole encoded file's samples, or null where the browser cannot decode it (the element may still
// play it: the run then has no waveform and no length).
async function decode(blob) {
  try {
    return await pageAudioContext().decodeAudioData(await blob.arrayBuffer());
  } catch (_) {
    return null;
  }
}

// ---- one run: request, read, draw, play, measure ----------------------------------------------------
// `name` is the download's name without its extension, which comes from body.response_format.
async function run({ kind, voiceLabel, path, body, streaming = false, name }) {
  if (controller) controller.abort();
  const own = new AbortController();
  controller = own;
  if (streaming) {
    const context = pageAudioContext();
    if (context.state === "suspended") context.resume();
  }
  const format = body.response_format;
  const filename = `${name}.${format}`;
  if (live) { live.stop(); live = null; }
  ui.player.pause();
  clearResult();  // the output shows this run only: no earlier audio to download by mistake
  setBusy(true);
  setStatus(streaming ? "generating…" : "generating the whole file…");
  ui.outputLabel.textContent = `· ${kind}`;
  waveform.reset();
  const started = performance.now();
  let firstAudio = null;
  const wav = new WavStream();
  try {
    const response = await call(path, { method: "POST", json: body, signal: own.signal });
    const player = streaming ? new LivePlayer(audioContext) : null;
    live = player;
    const reader = format === "wav" ? response.body.getReader() : null;
    while (reader) {
      const { done, value } = await reader.read();
      if (done) break;
      const bytes = wav.push(value);
      if (!bytes.length) continue;
      const channels = wav.toChannels(bytes);
      if (firstAudio === null) {
        firstAudio = performance.now();
        waveform.start(wav.format.sampleRate);
        if (streaming) setStatus(`first audio after ${formatMs(firstAudio - started)}, streaming…`);
      }
      waveform.append(channels[0]);
      if (player) player.schedule(channels, wav.format.sampleRate);
    }
    let blob, seconds;
    if (reader) {
      if (!wav.format || firstAudio === null) throw new Error("the response ended before any audio");
      [blob, seconds] = [wav.toBlob(), wav.seconds()];
    } else {
      blob = new Blob([await response.arrayBuffer()], { type: FORMATS[format] });
      if (!blob.size) throw new Error("the response ended before any audio");
      firstAudio = performance.now();  // a whole file: its first audio is all of it
      const audio = await decode(blob);
      own.signal.throwIfAborted();  // stopped, or a newer run owns the output now
      if (audio) { waveform.start(audio.sampleRate); waveform.append(audio.getChannelData(0)); }
      seconds = audio ? audio.duration : NaN;
    }
    const { total } = runs.add({
      kind, voice: voiceLabel, startedAt: started, firstAudioAt: firstAudio, doneAt: performance.now(), seconds,
    });
    setStatus(Number.isFinite(seconds) ? `${seconds.toFixed(2)} s of audio in ${formatMs(total)}` : `done in ${formatMs(total)}`);
    if (player) {
      // Hand over to the element where live playback has got to; live playback goes on until the
      // element actually plays, so there is no silent gap.
      showResult(blob, filename, {
        position: () => player.position() + 0.02,
        handover: () => { player.stop(); if (live === player) live = null; },
      });
    } else {
      showResult(blob, filename);
    }
  } catch (e) {
    if (live) { live.stop(); live = null; }
    if (e.name === "AbortError") setStatus("stopped");
    else setStatus(e instanceof ApiError ? e.message : `error: ${e.message}`, true);
    if (firstAudio !== null && wav.format) showResult(wav.toBlob(), filename, { autoplay: false });  // what came
  } finally {
    if (controller === own) { controller = null; setBusy(false); }
  }
}

function setBusy(busy) {
  ui.speak.disabled = busy;
  ui.generateConversation.disabled = busy;
  ui.stop.disabled = !busy;
}

async function speak(event) {
  event.preventDefault();
  if (!ui.text.value.trim()) { setStatus("type some text first", true); return; }
  if (ui.contextFile.files[0] && !ui.contextText.value.trim()) {
    setStatus("type what the context recording says (its transcript)", true);
    return;
  }
  const streaming = streams();
  setBusy(true);  // reading a context file takes a moment: no second request meanwhile
  let body;
  try {
    body = await speakBody(streaming);
  } catch (e) {
    setBusy(false);
    setStatus(`context file: ${e.message}`, true);
    return;
  }
  await run({
    kind: streaming ? "speak (streamed)" : "speak", voiceLabel: selectedVoiceLabel(), path: "speak",
    body, streaming, name: "speech",
  });
}

function generateConversation() {
  const { turns, error } = conversation.body();
  if (error) { setStatus(error, true); return; }
  const speakers = [...new Set(turns.map((t) => t.speaker))].join(" & ");
  run({
    kind: `conversation (${turns.length} turns)`, voiceLabel: `speakers ${speakers}`, path: "conversation",
    body: { turns, response_format: ui.format.value, speed: speed() }, name: "conversation",
  });
}

async function showModel() {
  // The development model speaks noise: say so before anyone judges the audio.
  try {
    const info = await (await call("info")).json();
    const badge = $("model-badge");
    badge.textContent = info.model;
    badge.hidden = false;
    const notice = $("model-notice");
    if (info.random_weights) {
      notice.textContent = `${info.notice || `${info.model} has random weights: its audio is noise`}.`;
      notice.hidden = false;
    }
  } catch (_) {
    // /info is informative only.
  }
}

ui.form.addEventListener("submit", speak);
ui.text.addEventListener("keydown", (e) => {  // Enter is a new line in the text; Ctrl/⌘+Enter speaks
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); ui.form.requestSubmit(); }
});
ui.stop.addEventListener("click", () => controller && controller.abort());
ui.speed.addEventListener("input", () => { ui.speedValue.textContent = `${speed().toFixed(2)}×`; });
ui.stream.addEventListener("change", showFormatScope);
showFormatScope();
ui.addTurn.addEventListener("click", () => conversation.add().querySelector(".turn-text").focus());
ui.generateConversation.addEventListener("click", generateConversation);
rememberKey(() => { voices.refresh(); fillBuiltinVoices(); showModel(); });
voices.refresh();
fillBuiltinVoices();
showModel();
requestAnimationFrame(followPlayback);
