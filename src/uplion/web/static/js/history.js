// Conversations kept in this browser (localStorage), one store per API token id, so people who
// share a browser do not see each other's chats. Nothing of it is sent anywhere but the model.

const MAX_CONVERSATIONS = 50;

/** A random id (crypto.randomUUID needs a secure context; getRandomValues does not). */
function newId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

export class History {
  constructor(owner) {
    this.key = `uplion.chat.${owner}`;
    let stored = null;
    try {
      stored = JSON.parse(localStorage.getItem(this.key) || "null");
    } catch {
      stored = null;
    }
    this.conversations = Array.isArray(stored?.conversations) ? stored.conversations : [];
    this.currentId = stored?.currentId ?? null;
  }

  get current() {
    return this.conversations.find((c) => c.id === this.currentId) || null;
  }

  create(model) {
    const conversation = {
      id: newId(), title: "New chat", model, messages: [], created: Date.now(),
    };
    this.conversations.unshift(conversation);
    this.conversations.splice(MAX_CONVERSATIONS);
    this.currentId = conversation.id;
    this.save();
    return conversation;
  }

  select(id) {
    this.currentId = id;
    this.save();
  }

  remove(id) {
    this.conversations = this.conversations.filter((c) => c.id !== id);
    if (this.currentId === id) this.currentId = this.conversations[0]?.id ?? null;
    this.save();
  }

  /** Write it all back; when the browser's storage is full, the oldest conversations go. */
  save() {
    for (;;) {
      try {
        localStorage.setItem(this.key, JSON.stringify({
          conversations: this.conversations, currentId: this.currentId,
        }));
        return;
      } catch {
        if (this.conversations.length <= 1) return;
        this.conversations.pop();
      }
    }
  }
}
