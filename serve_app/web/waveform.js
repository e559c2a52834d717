// A live waveform on a canvas: peaks are kept per 5 ms as samples stream in and drawn at once;
// a playhead follows playback, and a click on the canvas asks to seek there.

const BUCKETS_PER_SECOND = 200;
const MIN_VIEW_SECONDS = 3;   // the view starts this wide and widens as audio keeps coming
const MIN_SCALE_PEAK = 0.1;   // quieter audio is magnified up to this level, silence is not

export class Waveform {
  constructor(canvas, { onSeek = () => {} } = {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.reset();
    new ResizeObserver(() => this.resize()).observe(canvas);
    canvas.addEventListener("click", (event) => {
      if (!this.samples) return;
      const box = canvas.getBoundingClientRect();
      onSeek(((event.clientX - box.left) / box.width) * this.viewSeconds());
    });
    this.resize();
  }

  reset() {
    this.rate = 0;
    this.samples = 0;
    this.peaks = [];           // [min, max] per bucket
    this.bucketSize = 1;
    this.current = null;       // the bucket being filled
    this.loudest = 0;
    this.position = 0;         // seconds played
    this.publish();
    this.requestDraw();
  }

  start(sampleRate) {
    this.rate = sampleRate;
    this.bucketSize = Math.max(1, Math.round(sampleRate / BUCKETS_PER_SECOND));
  }

  append(samples) {
    for (let i = 0; i < samples.length; i++) {
      const s = samples[i];
      if (this.current === null) this.current = { min: s, max: s, count: 0 };
      if (s < this.current.min) this.current.min = s;
      if (s > this.current.max) this.current.max = s;
      if (Math.abs(s) > this.loudest) this.loudest = Math.abs(s);
      if (++this.current.count === this.bucketSize) {
        this.peaks.push([this.current.min, this.current.max]);
        this.current = null;
      }
    }
    this.samples += samples.length;
    this.publish();
    this.requestDraw();
  }

  seconds() { return this.rate ? this.samples / this.rate : 0; }
  viewSeconds() { return Math.max(MIN_VIEW_SECONDS, this.seconds()); }

  setPosition(seconds) {
    if (Math.abs(seconds - this.position) < 1e-3) return;
    this.position = seconds;
    this.requestDraw();
  }

  // State for whoever watches the page (tests, devtools): how much audio is drawn so far.
  publish() {
    this.canvas.dataset.samples = String(this.samples);
    this.canvas.dataset.seconds = this.seconds().toFixed(3);
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const box = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(box.width * ratio));
    this.canvas.height = Math.max(1, Math.round(box.height * ratio));
    this.draw();
  }

  requestDraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
  }

  draw() {
    const { width, height } = this.canvas;
    const g = this.context;
    const style = getComputedStyle(this.canvas);
    const color = (name) => style.getPropertyValue(name).trim();
    const middle = height / 2;
    g.clearRect(0, 0, width, height);
    g.fillStyle = color("--wave-axis");
    g.fillRect(0, Math.floor(middle), width, 1);
    const peaks = this.current ? [...this.peaks, [this.current.min, this.current.max]] : this.peaks;
    if (!peaks.length) return;
    const perPixel = (this.viewSeconds() * BUCKETS_PER_SECOND) / width;
    const gain = (0.92 * middle) / Math.max(MIN_SCALE_PEAK, this.loudest);
    const playedX = (this.position / this.viewSeconds()) * width;
    const barWidth = Math.max(1, Math.round(window.devicePixelRatio || 1));
    for (let x = 0; x < width; x += barWidth) {
      const first = Math.floor(x * perPixel);
      if (first >= peaks.length) break;
      const last = Math.min(peaks.length, Math.max(first + 1, Math.floor((x + barWidth) * perPixel)));
      let low = 0, high = 0;
      for (let b = first; b < last; b++) { low = Math.min(low, peaks[b][0]); high = Math.max(high, peaks[b][1]); }
      const top = middle - high * gain;
      g.fillStyle = x < playedX ? color("--wave-played") : color("--wave-ahead");
      g.fillRect(x, top, barWidth, Math.max(barWidth, (high - low) * gain));
    }
    if (this.position > 0) {
      g.fillStyle = color("--wave-head");
      g.fillRect(Math.min(width - 2, playedX), 0, 2, height);
    }
  }
}
