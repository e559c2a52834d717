// Parsing a WAV as it streams in: the header (fmt, data) may arrive split over several network
// chunks, and a streamed header says "unknown size". Whole WAVs parse the same way.

export class WavStream {
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
