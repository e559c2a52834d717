// The conversation builder: an editable list of turns (speaker, text, pause) → a /conversation body.

const STARTER = [
  { speaker: 0, text: "Did you hear the news this morning?", pause: 400 },
  { speaker: 1, text: "No, what happened? Tell me everything!", pause: 400 },
];

export class ConversationBuilder {
  constructor(list, template) {
    this.list = list;
    this.template = template;
    for (const turn of STARTER) this.add(turn);
  }

  add({ speaker, text = "", pause = 400 } = {}) {
    const item = this.template.content.firstElementChild.cloneNode(true);
    const last = this.turns().at(-1);
    item.querySelector(".turn-speaker").value = String(speaker ?? (last ? 1 - last.speaker : 0));
    item.querySelector(".turn-text").value = text;
    item.querySelector(".turn-pause").value = String(pause);
    item.querySelector(".turn-remove").addEventListener("click", () => {
      if (this.list.children.length > 1) item.remove();
    });
    this.list.append(item);
    return item;
  }

  turns() {
    return [...this.list.children].map((item) => ({
      speaker: Number(item.querySelector(".turn-speaker").value),
      text: item.querySelector(".turn-text").value.trim(),
      pause_ms: Number(item.querySelector(".turn-pause").value || 0),
    }));
  }

  // The request body, or an error message when a turn is empty.
  body() {
    const turns = this.turns();
    const empty = turns.findIndex((t) => !t.text);
    if (empty >= 0) return { error: `turn ${empty + 1} has no text` };
    return { turns };
  }
}
