// What each run took: time to first audio, audio length, total time and the real-time factor
// (time taken ÷ audio length; below 1 means faster than real time), shown as stats and a table.

const $ = (id) => document.getElementById(id);
const SHOWN_RUNS = 8;

export function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export class RunLog {
  constructor() {
    this.count = 0;
    this.cells = { ttfa: $("stat-ttfa"), audio: $("stat-audio"), total: $("stat-total"), rtf: $("stat-rtf") };
    this.body = $("runs-body");
  }

  // `run`: {kind, voice, startedAt, firstAudioAt, doneAt (performance.now() values), seconds (NaN
  // where the browser could not decode the audio)}
  add(run) {
    this.count += 1;
    const ttfa = run.firstAudioAt - run.startedAt;
    const total = run.doneAt - run.startedAt;
    const rtf = run.seconds > 0 ? total / 1000 / run.seconds : NaN;
    const values = {
      ttfa: formatMs(ttfa),
      audio: Number.isFinite(run.seconds) ? `${run.seconds.toFixed(2)} s` : "–",
      total: formatMs(total),
      rtf: Number.isFinite(rtf) ? rtf.toFixed(2) : "–",
    };
    for (const [name, text] of Object.entries(values)) this.cells[name].textContent = text;
    const row = document.createElement("tr");
    row.dataset.ttfaMs = String(Math.round(ttfa));
    row.dataset.rtf = Number.isFinite(rtf) ? rtf.toFixed(4) : "";
    for (const text of [String(this.count), run.kind, run.voice, values.ttfa, values.audio, values.rtf]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    this.body.prepend(row);
    while (this.body.children.length > SHOWN_RUNS) this.body.lastElementChild.remove();
    return { ttfa, total, rtf };
  }
}
