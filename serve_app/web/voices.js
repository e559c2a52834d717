// Saved voices: record a reference from the microphone (or pick a file), upload it with its
// transcript as multipart/form-data, and list, preview, use and delete the voices on the server.

import { ApiError, call } from "./api.js";

const $ = (id) => document.getElementById(id);

// Records from the microphone with MediaRecorder; the server decodes what the browser makes
// (WebM/Opus in Chromium, Ogg or MP4 elsewhere).
class Recorder {
  constructor(onTick) { this.onTick = onTick; this.recorder = null; this.blob = null; }

  get recording() { return this.recorder !== null && this.recorder.state === "recording"; }

  async start() {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    this.blob = null;
    this.recorder = new MediaRecorder(stream);
    this.recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
    this.stopped = new Promise((resolve) => this.recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((t) => t.stop());
      this.blob = new Blob(chunks, { type: this.recorder.mimeType || "audio/webm" });
      resolve(this.blob);
    }, { once: true }));
    const began = performance.now();
    this.timer = setInterval(() => this.onTick((performance.now() - began) / 1000), 100);
    this.recorder.start(250);
  }

  async stop() {
    clearInterval(this.timer);
    this.recorder.stop();
    return this.stopped;
  }
}

function extensionOf(type) {
  if (type.includes("ogg")) return "ogg";
  if (type.includes("mp4")) return "m4a";
  return "webm";
}

export class VoiceManager {
  // onList(voices): the list changed; onUse(voice); onPreview(voice)
  constructor({ onList, onUse, onPreview }) {
    this.handlers = { onList, onUse, onPreview };
    this.ui = {
      form: $("voice-form"), name: $("voice-name"), transcript: $("voice-transcript"),
      speaker: $("voice-speaker"), record: $("record"), recordLabel: document.querySelector("#record .record-label"),
      recordTime: $("record-time"), file: $("voice-file"), recording: $("recording"),
      save: $("save-voice"), status: $("voice-status"), list: $("voice-list"), empty: $("no-voices"),
    };
    this.recorder = new Recorder((s) => { this.ui.recordTime.textContent = `${s.toFixed(1)} s`; });
    this.recordingUrl = null;
    this.ui.record.addEventListener("click", () => this.toggleRecording());
    this.ui.file.addEventListener("change", () => { if (this.ui.file.files[0]) this.showRecording(null); });
    this.ui.form.addEventListener("submit", (e) => { e.preventDefault(); this.save(); });
  }

  setStatus(message, isError = false) {
    this.ui.status.textContent = message;
    this.ui.status.classList.toggle("error", isError);
  }

  async toggleRecording() {
    const { record, recordLabel } = this.ui;
    try {
      if (this.recorder.recording) {
        const blob = await this.recorder.stop();
        record.setAttribute("aria-pressed", "false");
        recordLabel.textContent = "Record again";
        this.showRecording(blob);
        this.setStatus("recorded: listen, then save");
      } else {
        await this.recorder.start();
        this.ui.file.value = "";
        record.setAttribute("aria-pressed", "true");
        recordLabel.textContent = "Stop";
        this.setStatus("recording… read your transcript aloud");
      }
    } catch (e) {
      this.setStatus(`microphone: ${e.message}`, true);
    }
  }

  showRecording(blob) {
    if (this.recordingUrl) URL.revokeObjectURL(this.recordingUrl);
    this.recordingUrl = blob ? URL.createObjectURL(blob) : null;
    this.ui.recording.hidden = !blob;
    if (blob) this.ui.recording.src = this.recordingUrl; else this.ui.recording.removeAttribute("src");
    // MediaRecorder writes WebM without its length (duration Infinity: no scrubbing); seeking past
    // the end makes the browser find it.
    const player = this.ui.recording;
    player.addEventListener("loadedmetadata", () => {
      if (player.duration !== Infinity) return;
      player.addEventListener("durationchange", () => { player.currentTime = 0; }, { once: true });
      player.currentTime = 1e101;
    }, { once: true });
  }

  // The recording or the chosen file, as a form part.
  reference() {
    const file = this.ui.file.files[0];
    if (file) return [file, file.name];
    const blob = this.recorder.blob;
    return blob && !this.ui.recording.hidden ? [blob, `recording.${extensionOf(blob.type)}`] : null;
  }

  async save() {
    const reference = this.reference();
    if (!reference) { this.setStatus("record a reference or choose a file first", true); return; }
    const form = new FormData();
    form.append("name", this.ui.name.value.trim());
    form.append("transcript", this.ui.transcript.value.trim());
    form.append("speaker", this.ui.speaker.value);
    form.append("audio", ...reference);
    this.ui.save.disabled = true;
    this.setStatus("encoding the reference…");
    try {
      const voice = await (await call("v1/voices", { method: "POST", form })).json();
      this.setStatus(`saved “${voice.name}” (${(voice.duration_ms / 1000).toFixed(1)} s)`);
      this.ui.form.reset();
      this.showRecording(null);
      this.recorder.blob = null;
      this.ui.recordLabel.textContent = "Record";
      this.ui.recordTime.textContent = "0.0 s";
      await this.refresh();
      this.handlers.onUse(voice);
    } catch (e) {
      this.setStatus(e instanceof ApiError ? e.message : `error: ${e.message}`, true);
    } finally {
      this.ui.save.disabled = false;
    }
  }

  async refresh() {
    let voices;
    try {
      const body = await (await call("v1/voices")).json();
      voices = Array.isArray(body) ? body : body.data || [];
    } catch (e) {
      // Not "no voices": the list could not be read (a key not entered yet, the server away).
      // Keep what was shown, and say why it may be stale.
      this.setStatus(`couldn't load saved voices: ${e.message}`, true);
      return this.voices || [];
    }
    this.voices = voices;
    this.ui.list.replaceChildren(...voices.map((v) => this.item(v)));
    this.ui.empty.hidden = voices.length > 0;
    this.handlers.onList(voices);
    return voices;
  }

  item(voice) {
    const li = document.createElement("li");
    li.className = "voice";
    li.dataset.id = voice.id;
    const name = document.createElement("span");
    name.className = "voice-name";
    name.textContent = voice.name;
    const meta = document.createElement("span");
    meta.className = "voice-meta";
    meta.textContent = `${(voice.duration_ms / 1000).toFixed(1)} s · speaker ${voice.speaker} · “${voice.transcript}”`;
    meta.title = voice.id;
    const button = (label, cls, action) => {
      const b = document.createElement("button");
      b.type = "button"; b.className = cls; b.textContent = label;
      b.setAttribute("aria-label", `${label} voice ${voice.name}`);  // each row's buttons, told apart
      b.addEventListener("click", action);
      return b;
    };
    li.append(
      name, meta,
      button("Use", "voice-use", () => this.handlers.onUse(voice)),
      button("Preview", "voice-preview", () => this.handlers.onPreview(voice)),
      button("Delete", "voice-delete", () => this.remove(voice)),
    );
    return li;
  }

  async remove(voice) {
    if (!window.confirm(`Delete the saved voice “${voice.name}”? Requests naming it will fail.`)) return;
    try {
      await call(`v1/voices/${encodeURIComponent(voice.id)}`, { method: "DELETE" });
      this.setStatus(`deleted “${voice.name}”`);
    } catch (e) {
      this.setStatus(e.message, true);
    }
    await this.refresh();
  }
}
