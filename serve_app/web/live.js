// Live playback of PCM as it streams in (Web Audio): each chunk is scheduled right after the one
// before, so playback starts with the first chunk and has no gaps while data keeps up.

export class LivePlayer {
  constructor(audioContext) {
    this.audioContext = audioContext;
    this.sources = [];
    this.startTime = null;   // context time at which the first sample plays
    this.head = 0;           // context time at which the next chunk starts
  }

  schedule(channels, sampleRate) {
    const ctx = this.audioContext;
    const buffer = ctx.createBuffer(channels.length, channels[0].length, sampleRate);
    channels.forEach((data, c) => buffer.copyToChannel(data, c));
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    if (this.startTime === null) {
      this.startTime = ctx.currentTime + 0.05;
      this.head = this.startTime;
    }
    this.head = Math.max(this.head, ctx.currentTime);
    source.start(this.head);
    this.head += buffer.duration;
    this.sources.push(source);
  }

  // Seconds heard so far.
  position() {
    return this.startTime === null ? 0 : Math.max(0, this.audioContext.currentTime - this.startTime);
  }

  stop() {
    for (const source of this.sources) {
      try { source.stop(); } catch (_) { /* already ended */ }
    }
  }
}
