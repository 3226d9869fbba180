// llmsite playground: sign in (JWT) or use an API key, then chat over the
// WebSocket at /v1/realtime/chat, one streamed assistant message at a time.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: null, socket: null, history: [], active: null, seq: 0 };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("m-status").textContent = text;
}

function describe(error) {
  // OpenAI error object -> a sentence a person can act on.
  if (!error) return "Something went wrong.";
  if (error.code === "invalid_api_key" || error.code === "invalid_credentials") {
    return "That key or sign-in was not accepted: " + error.message;
  }
  if (error.code === "model_not_found") return "Model not found: " + error.message;
  if (error.type === "requests" || error.code === "rate_limit_exceeded"
      || error.code === "insufficient_quota") {
    return "Rate limited: " + error.message;
  }
  return error.message || String(error);
}

async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    const error = body.error || { message: response.statusText };
    if (retry) error.message += " (retry in " + retry + " s)";
    throw error;
  }
  return body;
}

async function start(token, who) {
  state.token = token;
  showError("");
  let models;
  try {
    models = await api("/v1/models");
  } catch (error) {
    state.token = null;
    showError(describe(error));
    return;
  }
  const select = $("model");
  select.innerHTML = "";
  for (const model of models.data) {
    const option = document.createElement("option");
    option.value = option.textContent = model.id;
    select.appendChild(option);
  }
  // The default chat model (LLMSITE_DEFAULT_MODEL) when the caller may use it.
  if (models.data.some((m) => m.id === select.dataset.default)) select.value = select.dataset.default;
  $("who").textContent = who;
  $("signin").hidden = true;
  $("chat").hidden = false;
  connect();
  $("prompt").focus();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  // The token travels as a subprotocol, never in the URL (URLs end up in logs).
  const socket = new WebSocket(scheme + location.host + "/v1/realtime/chat",
                               ["llmsite.bearer", state.token]);
  state.socket = socket;
  setStatus("connecting");
  socket.onmessage = (event) => onMessage(JSON.parse(event.data));
  socket.onclose = (event) => {
    if (event.code === 4401) {
      showError("That key or sign-in was not accepted.");
      $("chat").hidden = true;
      $("signin").hidden = false;
    }
    finish(null, "disconnected");
    state.socket = null;
  };
  // Keep idle sockets alive behind proxies.
  state.heartbeat = setInterval(() => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ping" }));
  }, 25000);
}

function onMessage(msg) {
  if (msg.type === "auth.ok") { setStatus("ready"); return; }
  if (msg.type === "pong") return;
  const active = state.active;
  if (msg.type === "error") {
    let text = describe(msg.error);
    if (msg.retry_after !== undefined) text += " (retry in " + msg.retry_after + " s)";
    showError(text);
    if (active && (!msg.request_id || msg.request_id === active.id)) finish(null, "error");
    return;
  }
  if (!active || msg.request_id !== active.id) return;
  if (msg.type === "chat.completion.chunk") {
    const choice = msg.chunk.choices[0];
    const text = choice && choice.delta && choice.delta.content;
    if (text) {
      const now = performance.now();
      if (!active.first) {
        active.first = now;
        $("m-ttft").textContent = Math.round(now - active.sent) + " ms";
      }
      active.pieces += 1;
      active.node.textContent += text;
      const seconds = (now - active.first) / 1000;
      if (seconds > 0) $("m-tps").textContent = (active.pieces / seconds).toFixed(1);
    }
  } else if (msg.type === "chat.completion.done") {
    const usage = msg.usage || {};
    $("m-prompt").textContent = usage.prompt_tokens;
    $("m-completion").textContent = usage.completion_tokens;
    if (active.first && usage.completion_tokens) {
      const seconds = (performance.now() - active.first) / 1000;
      if (seconds > 0) $("m-tps").textContent = (usage.completion_tokens / seconds).toFixed(1);
    }
    finish(active.node.textContent, msg.finish_reason === "cancelled" ? "stopped" : "done");
  }
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("p");
  body.textContent = text;
  item.append(label, body);
  $("transcript").appendChild(item);
  item.scrollIntoView({ block: "end" });
  return body;
}

function send() {
  const prompt = $("prompt").value.trim();
  if (!prompt || state.active || !state.socket) return;
  showError("");
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: prompt });
  addMessage("user", prompt);
  const node = addMessage("assistant", "");
  const id = "r" + (++state.seq);
  state.active = { id, node, prompt, sent: performance.now(), first: null, pieces: 0 };
  ["m-ttft", "m-tps", "m-prompt", "m-completion"].forEach((m) => { $(m).textContent = "–"; });
  state.socket.send(JSON.stringify({
    type: "chat.completion.create",
    request_id: id,
    body: {
      model: $("model").value,
      messages,
      temperature: Number($("temperature").value),
      max_tokens: Number($("max-tokens").value),
    },
  }));
  $("prompt").value = "";
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("generating");
}

function stop() {
  if (state.active && state.socket) {
    state.socket.send(JSON.stringify({ type: "cancel", request_id: state.active.id }));
  }
}

function finish(text, status) {
  const active = state.active;
  if (active && text !== null) {
    state.history.push({ role: "user", content: active.prompt },
                       { role: "assistant", content: text });
  }
  state.active = null;
  $("send").disabled = false;
  $("stop").disabled = true;
  setStatus(status);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const tokens = await api("/api/auth/token/", {
      method: "POST",
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    await start(tokens.access, "as " + $("username").value);
  } catch (error) {
    showError(describe(error));
  }
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start($("api-key").value.trim(), "with an API key");
});

$("prompt-form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
});
$("stop").addEventListener("click", stop);
document.addEventListener("keydown", (event) => { if (event.key === "Escape") stop(); });
