// The llama-triton chat playground. Plain browser JavaScript: no build step, no dependencies, nothing
// fetched from anywhere but this server. Parameter ranges and defaults come from /openapi.json.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const API = "/v1";
  const KEY_STORE = "llama-triton.api-key";   // sessionStorage only: gone when the tab closes
  // The seed's request fields in the panel, in order, and how each is edited. Bounds, defaults and
  // enums are read from the ChatCompletionRequest schema of /openapi.json.
  const FIELDS = [
    ["temperature", "number"], ["top_p", "number"], ["min_p", "number"], ["top_k", "number"],
    ["max_tokens", "number"], ["stop", "lines"], ["n", "number"], ["presence_penalty", "number"],
    ["frequency_penalty", "number"], ["repetition_penalty", "number"], ["seed", "number"],
    ["logprobs", "bool"], ["top_logprobs", "number"], ["reasoning_effort", "enum"], ["prompt_cache_key", "text"],
  ];
  // Fields the openai package does not take as keyword arguments: they go in extra_body.
  const PY_EXTRA = new Set(["min_p", "top_k", "repetition_penalty", "min_tokens", "stop_token_ids"]);
  const PY_EXTRA_RESPONSES = new Set([...PY_EXTRA, "presence_penalty", "frequency_penalty", "seed", "stop"]);
  // Chat fields the Responses API does not have (the panel greys them out in that mode).
  const NOT_IN_RESPONSES = new Set(["n", "logprobs", "top_logprobs"]);
  const DEFAULT_SCHEMA = {
    type: "object",
    properties: {answer: {type: "string", maxLength: 40}, confidence: {type: "integer", minimum: 0, maximum: 9}},
    required: ["answer", "confidence"], additionalProperties: false,
  };

  const controls = {};      // field name -> {kind, input}
  let turns = [];           // the conversation after the system message: {role, content, tool_calls?, tool_call_id?}
  let current = null;       // the Reply on screen, not yet part of `turns`
  let controller = null;    // AbortController of the request in flight

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function apiKey() { return $("api-key").value.trim(); }

  function headers() {
    const h = {"Content-Type": "application/json"};
    if (apiKey()) h.Authorization = "Bearer " + apiKey();
    return h;
  }

  function showError(status, text) {
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* not JSON: as it came */ }
    $("error-status").textContent = status;
    $("error-body").textContent = shown;
    $("error").hidden = false;
  }

  function hideError() { $("error").hidden = true; }

  // ---------------------------------------------------------------------------------------------
  // The parameter panel, built from the OpenAPI document

  function resolve(doc, s) {
    while (s && s.$ref) s = doc.components.schemas[s.$ref.split("/").pop()];
    return s || {};
  }

  // One property schema -> {type, minimum, maximum, exclusiveMinimum, exclusiveMaximum, default, enum}
  // (nullable fields are anyOf [X, null]: X is what matters).
  function flatten(doc, prop) {
    const out = {};
    const branches = prop.anyOf || prop.oneOf || [prop];
    for (const raw of branches) {
      const b = resolve(doc, raw);
      if (b.type === "null") continue;
      for (const k of ["type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum"]) {
        if (b[k] !== undefined && out[k] === undefined) out[k] = b[k];
      }
    }
    out.default = prop.default;
    out.description = prop.description;
    return out;
  }

  // The discriminator values of a union (response_format types, tool_choice modes).
  function unionTags(doc, prop, out = []) {
    const s = resolve(doc, prop);
    for (const b of s.anyOf || s.oneOf || []) unionTags(doc, b, out);
    if (s.enum) out.push(...s.enum.filter((v) => typeof v === "string"));
    const t = s.properties && s.properties.type;
    if (t && t.const !== undefined) out.push(t.const);
    else if (t && t.enum && t.enum.length === 1) out.push(t.enum[0]);
    return out;
  }

  // Integers past 2^53 (seed's bounds) as /openapi.json wrote them: JSON.parse rounds them.
  const exactNumbers = new Map();

  function parseDoc(text) {
    return JSON.parse(text, (key, value, context) => {
      if (typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value) && context && context.source) {
        exactNumbers.set(value, context.source);
      }
      return value;
    });
  }

  function num(n) { return exactNumbers.get(n) || String(n); }

  function rangeText(f) {
    const lo = f.exclusiveMinimum !== undefined ? "(" + num(f.exclusiveMinimum) : f.minimum !== undefined ? "[" + num(f.minimum) : "(-inf";
    const hi = f.exclusiveMaximum !== undefined ? num(f.exclusiveMaximum) + ")" : f.maximum !== undefined ? num(f.maximum) + "]" : "inf)";
    return lo + ", " + hi;
  }

  function buildParams(doc) {
    const schema = resolve(doc, doc.paths[API + "/chat/completions"].post.requestBody.content["application/json"].schema);
    const props = schema.properties;
    const box = $("param-fields");
    for (const [name, kind] of FIELDS) {
      if (!props[name]) continue;
      const f = flatten(doc, props[name]);
      const row = el("div", "param");
      const label = el("label", null, name);
      const id = "p-" + name;
      label.htmlFor = id;
      let input;
      const hint = [];
      if (kind === "number") {
        input = el("input");
        input.type = "number";
        input.step = f.type === "integer" ? "1" : "any";
        // min/max only mark the field invalid; the value is still sent, so the server's 400 shows.
        if (f.minimum !== undefined) input.min = f.minimum;
        if (f.maximum !== undefined) input.max = f.maximum;
        hint.push(rangeText(f));
      } else if (kind === "bool") {
        input = el("input");
        input.type = "checkbox";
      } else if (kind === "enum") {
        input = el("select");
        input.append(new Option("(not sent)", ""));
        for (const v of f.enum || []) input.append(new Option(v, v));
      } else if (kind === "lines") {
        input = el("textarea");
        input.rows = 2;
        input.placeholder = "one per line";
      } else {
        input = el("input");
      }
      input.id = id;
      if (f.default !== undefined && f.default !== null) {
        hint.push("default " + JSON.stringify(f.default));
        if (input.placeholder !== undefined && kind === "number") input.placeholder = String(f.default);
      } else if (kind === "number") {
        input.placeholder = "server decides";
      }
      if (f.description) label.title = f.description;
      row.append(label, input);
      if (hint.length) row.append(el("div", "hint", hint.join(" · ")));
      if (name === "max_tokens") {
        const cap = el("div", "hint");
        cap.id = "max-tokens-hint";
        row.append(cap);
      }
      box.append(row);
      controls[name] = {kind, input, type: f.type};
    }
    const rf = $("rf-type");
    rf.append(new Option("(not sent)", ""));
    for (const t of [...new Set(unionTags(doc, props.response_format))]) rf.append(new Option(t, t));
    const tc = $("tool-choice");
    tc.append(new Option("(not sent)", ""));
    for (const t of [...new Set(unionTags(doc, props.tool_choice))]) {
      tc.append(t === "function" ? new Option("a named function", "function") : new Option(t, t));
    }
    $("rf-schema").value = JSON.stringify(DEFAULT_SCHEMA, null, 2);
  }

  function readParams(body) {
    for (const [name, c] of Object.entries(controls)) {
      if (c.kind === "number") {
        const v = c.input.value.trim();
        if (v !== "") body[name] = Number(v);
      } else if (c.kind === "bool") {
        if (c.input.checked) body[name] = true;
      } else if (c.kind === "lines") {
        const lines = c.input.value.split("\n").filter((s) => s !== "");
        if (lines.length) body[name] = lines;
      } else if (c.input.value !== "") {
        body[name] = c.input.value;
      }
    }
    const type = $("rf-type").value;
    if (type === "json_schema") {
      body.response_format = {type, json_schema: {name: $("rf-name").value || "reply",
                                                  schema: parseJSON($("rf-schema").value, "the JSON schema")}};
    } else if (type === "regex") {
      body.response_format = {type, regex: $("rf-regex").value};
    } else if (type) {
      body.response_format = {type};
    }
    if ($("tools").value.trim()) body.tools = parseJSON($("tools").value, "tools");
    const choice = $("tool-choice").value;
    if (choice === "function") body.tool_choice = {type: "function", function: {name: $("tool-choice-name").value}};
    else if (choice) body.tool_choice = choice;
  }

  function parseJSON(text, what) {
    try { return JSON.parse(text); } catch (e) { throw new Error(what + " is not valid JSON: " + e.message); }
  }

  // ---------------------------------------------------------------------------------------------
  // The conversation

  function renderTurns() {
    const box = $("turns");
    box.replaceChildren();
    turns.forEach((t, i) => {
      const card = el("div", "turn " + t.role);
      const head = el("div", "role", t.role);
      if (t.role === "tool") {
        const id = el("input");
        id.value = t.tool_call_id || "";
        id.placeholder = "tool_call_id";
        id.addEventListener("input", () => { t.tool_call_id = id.value; });
        head.append(id);
      }
      const del = el("button", null, "delete");
      del.type = "button";
      del.addEventListener("click", () => { turns.splice(i, 1); renderTurns(); });
      head.append(del);
      const text = el("textarea");
      text.rows = Math.min(8, Math.max(1, (t.content || "").split("\n").length));
      text.value = t.content || "";
      text.placeholder = t.tool_calls ? "(no content: tool calls below)" : "";
      text.addEventListener("input", () => { t.content = text.value; });
      card.append(head, text);
      if (t.tool_calls) {
        const calls = el("textarea");
        calls.spellcheck = false;
        calls.rows = 3;
        calls.value = JSON.stringify(t.tool_calls, null, 1);
        calls.addEventListener("input", () => { t.tool_calls_text = calls.value; });
        card.append(el("div", "role", "tool_calls"), calls);
      }
      box.append(card);
    });
  }

  function messages() {
    const out = [];
    const system = $("system").value;
    if (system.trim()) out.push({role: "system", content: system});
    turns.forEach((t, i) => {
      const m = {role: t.role, content: t.content};
      if (t.role === "tool") m.tool_call_id = t.tool_call_id || "";
      if (t.tool_calls) {
        m.tool_calls = t.tool_calls_text !== undefined ? parseJSON(t.tool_calls_text, "tool_calls of turn " + (i + 1)) : t.tool_calls;
        if (!m.content) m.content = null;
      }
      out.push(m);
    });
    return out;
  }

  // The reply on screen joins the conversation (its chosen column) when the next message is added.
  function commitReply() {
    if (!current) return;
    const m = current.message();
    current = null;
    if (m) turns.push(m);
  }

  function takeComposer() {
    const text = $("message").value;
    const role = $("new-role").value;
    if (!text.trim() && role === "user") return;
    commitReply();
    const t = {role, content: text};
    if (role === "tool") t.tool_call_id = $("tool-call-id").value;
    turns.push(t);
    $("message").value = "";
    renderTurns();
  }

  function responsesMode() { return $("api-mode").value === "responses"; }

  function endpoint() { return API + (responsesMode() ? "/responses" : "/chat/completions"); }

  function buildRequest() {
    const body = {model: $("model").value, messages: messages()};
    readParams(body);
    body.stream = true;
    if (responsesMode()) return asResponsesRequest(body);
    body.stream_options = {include_usage: true};
    return body;
  }

  // The same conversation and settings as a Responses API request: the system message becomes
  // `instructions`, the turns input items (a reply's tool calls are `function_call` items, a tool
  // result a `function_call_output`), and the chat-shaped settings their Responses names. The
  // whole conversation is sent each time (store: false), so earlier turns stay editable.
  function asResponsesRequest(chat) {
    const body = {model: chat.model, input: [], stream: true, store: false};
    for (const m of chat.messages) {
      if (m.role === "system") body.instructions = m.content;
      else if (m.role === "tool") body.input.push({type: "function_call_output", call_id: m.tool_call_id, output: m.content});
      else {
        if (m.content) body.input.push({role: m.role, content: m.content});
        for (const c of m.tool_calls || []) {
          body.input.push({type: "function_call", call_id: c.id, name: c.function.name, arguments: c.function.arguments});
        }
      }
    }
    for (const [k, v] of Object.entries(chat)) {
      if (["model", "messages", "stream", "stream_options", "response_format", "tools", "tool_choice",
           "max_tokens", "reasoning_effort"].includes(k) || NOT_IN_RESPONSES.has(k)) continue;
      body[k] = v;
    }
    if (chat.max_tokens !== undefined) body.max_output_tokens = chat.max_tokens;
    if (chat.reasoning_effort) body.reasoning = {effort: chat.reasoning_effort};
    const rf = chat.response_format;
    if (rf && rf.type === "json_schema") {
      body.text = {format: {type: "json_schema", name: rf.json_schema.name, schema: rf.json_schema.schema, strict: true}};
    } else if (rf && rf.type === "json_object") {
      body.text = {format: {type: "json_object"}};
    } else if (rf && rf.type !== "text") {
      throw new Error("response_format " + rf.type + " has no Responses API form; use chat completions");
    }
    if (chat.tools) {
      body.tools = chat.tools.map((t) => ({type: "function", ...t.function}));
    }
    const tc = chat.tool_choice;
    if (tc) body.tool_choice = typeof tc === "string" ? tc : {type: "function", name: tc.function.name};
    return body;
  }

  // A Responses stream event as the chat chunk the reply view reads (one choice, index 0).
  class ResponsesEvents {
    constructor() { this.calls = {}; this.sawCall = false; }

    chunk(ev) {
      const one = (delta) => ({choices: [{index: 0, delta}]});
      switch (ev.type) {
        case "response.output_text.delta": return one({content: ev.delta});
        case "response.reasoning_text.delta": return one({reasoning_content: ev.delta});
        case "response.output_item.added":
          if (ev.item && ev.item.type === "function_call") {
            const index = this.calls[ev.output_index] = Object.keys(this.calls).length;
            this.sawCall = true;
            return one({tool_calls: [{index, id: ev.item.call_id, type: "function",
                                      function: {name: ev.item.name, arguments: ""}}]});
          }
          return null;
        case "response.function_call_arguments.delta":
          return one({tool_calls: [{index: this.calls[ev.output_index], function: {arguments: ev.delta}}]});
        case "response.completed":
        case "response.incomplete": {
          const u = ev.response.usage || {};
          const finish = ev.type === "response.incomplete" ? "length" : this.sawCall ? "tool_calls" : "stop";
          return {choices: [{index: 0, delta: {}, finish_reason: finish}],
                  usage: {prompt_tokens: u.input_tokens, completion_tokens: u.output_tokens, total_tokens: u.total_tokens,
                          prompt_tokens_details: {cached_tokens: (u.input_tokens_details || {}).cached_tokens || 0}}};
        }
        case "error": return {error: {message: ev.message, code: ev.code, param: ev.param}};
        case "response.failed": return ev.response.error ? null : {error: {message: "response.failed"}};
        default: return null;
      }
    }
  }

  function syncMode() {
    const responses = responsesMode();
    for (const name of NOT_IN_RESPONSES) {
      const c = controls[name];
      if (!c) continue;
      c.input.disabled = responses;
      c.input.closest(".param").classList.toggle("off", responses);
      c.input.title = responses ? "not part of the Responses API" : "";
    }
  }

  // ---------------------------------------------------------------------------------------------
  // One reply: n choices side by side

  class Choice {
    constructor(reply, index) {
      this.index = index;
      this.content = "";
      this.reasoning = "";
      this.calls = [];
      this.finish = null;
      this.tokens = 0;
      this.tFirst = null;
      this.tLast = null;
      this.root = el("div", "reply");
      this.root.dataset.index = index;
      const head = el("div", "role", "choice " + index);
      this.use = el("button", null, "continue with this");
      this.use.type = "button";
      this.use.addEventListener("click", () => reply.choose(index));
      if (reply.n > 1) head.append(this.use);
      this.reasoningEl = el("div", "reasoning");
      this.reasoningEl.hidden = true;
      this.contentEl = el("div", "content");
      this.callsEl = el("div", "calls");
      this.statsEl = el("div", "stats");
      this.root.append(head, this.reasoningEl, this.contentEl, this.callsEl, this.statsEl);
    }

    feed(c, now, t0) {
      const d = c.delta || {};
      let produced = 0;
      if (d.reasoning_content) {
        this.reasoning += d.reasoning_content;
        this.reasoningEl.hidden = false;
        this.reasoningEl.textContent = this.reasoning;
        produced = 1;
      }
      const lps = c.logprobs && c.logprobs.content;
      if (d.content) {
        this.content += d.content;
        if (lps && lps.length) {
          this.contentEl.append(...tokenSpans(lps, d.content));
        } else {
          this.contentEl.append(document.createTextNode(d.content));
        }
        produced = 1;
      }
      if (lps && lps.length) produced = lps.length;
      for (const tc of d.tool_calls || []) {
        let call = this.calls[tc.index];
        if (!call) {
          call = this.calls[tc.index] = {id: tc.id, name: (tc.function && tc.function.name) || "", arguments: ""};
          call.el = el("div", "call");
          call.argsEl = el("span", "args");
          call.el.append(el("span", "id", call.id || ""), el("span", "fn", call.name), "(", call.argsEl, ")");
          this.callsEl.append(call.el);
        }
        if (tc.function && tc.function.arguments) {
          call.arguments += tc.function.arguments;
          call.argsEl.textContent = call.arguments;
        }
        produced = Math.max(produced, 1);
      }
      if (produced) {
        if (this.tFirst === null) this.tFirst = now;
        this.tLast = now;
        this.tokens += produced;
      }
      if (c.finish_reason) this.finish = c.finish_reason;
      this.renderStats(t0);
    }

    renderStats(t0, completionTokens) {
      const tokens = completionTokens !== undefined ? completionTokens : this.tokens;
      const parts = [["finish_reason", this.finish === null ? "…" : this.finish], ["tokens", tokens]];
      if (this.tFirst !== null) {
        parts.push(["TTFT", Math.round(this.tFirst - t0) + " ms"]);
        const span = (this.tLast - this.tFirst) / 1000;
        if (tokens > 1 && span > 0) parts.push(["tokens/s", ((tokens - 1) / span).toFixed(1)]);
      }
      this.statsEl.replaceChildren(...parts.map(([k, v]) => {
        const s = el("span", "stat-" + k.replace(/\W/g, ""), k + " ");
        s.append(el("b", null, String(v)));
        return s;
      }));
    }

    message() {
      if (!this.content && !this.calls.length) return null;
      const m = {role: "assistant", content: this.content};
      if (this.calls.length) {
        m.tool_calls = this.calls.filter(Boolean).map((c) => ({id: c.id, type: "function",
                                                               function: {name: c.name, arguments: c.arguments}}));
      }
      return m;
    }
  }

  class Reply {
    constructor(n, t0) {
      this.n = n;
      this.t0 = t0;
      this.chosen = 0;
      this.usage = null;
      this.failed = false;
      this.box = $("replies");
      this.cols = el("div", "cols");
      this.usageEl = el("div", "usage");
      this.usageEl.id = "usage";
      this.choices = [];
      for (let i = 0; i < n; i++) {
        const c = new Choice(this, i);
        this.choices.push(c);
        this.cols.append(c.root);
      }
      this.box.replaceChildren(this.cols, this.usageEl);
      if (n > 1) this.choose(0);
      this.setState("streaming");
    }

    setState(state) { this.box.dataset.state = state; }

    choice(i) {
      while (this.choices.length <= i) {   // more choices than asked for: show them anyway
        const c = new Choice(this, this.choices.length);
        this.choices.push(c);
        this.cols.append(c.root);
      }
      return this.choices[i];
    }

    onEvent(ev) {
      const now = performance.now();
      if (ev.error) {                     // an error after the stream started: the envelope as sent
        this.failed = true;
        showError("in stream", JSON.stringify(ev));
        return;
      }
      for (const c of ev.choices || []) this.choice(c.index).feed(c, now, this.t0);
      if (ev.usage) {
        this.usage = ev.usage;
        const u = ev.usage;
        const cached = (u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens) || 0;
        this.usageEl.textContent = `usage: prompt_tokens ${u.prompt_tokens} (cached_tokens ${cached}) · ` +
          `completion_tokens ${u.completion_tokens} · total_tokens ${u.total_tokens}`;
        if (this.choices.length === 1) this.choices[0].renderStats(this.t0, u.completion_tokens);
      }
    }

    choose(i) {
      this.chosen = i;
      this.choices.forEach((c) => c.root.classList.toggle("chosen", c.index === i));
    }

    message() { return this.failed ? null : this.choices[this.chosen].message(); }
  }

  // The shaded tokens of one delta, showing exactly the delta's text: a token's text may differ
  // (the first token of a reply carries a space the content drops), so the extra head is cut off.
  function tokenSpans(lps, text) {
    const joined = lps.map((lp) => lp.token).join("");
    if (joined !== text && !joined.endsWith(text)) return [tokenSpan(lps[0], text)];
    let cut = joined.length - text.length;
    return lps.map((lp) => {
      const shown = lp.token.slice(Math.min(cut, lp.token.length));
      cut = Math.max(0, cut - lp.token.length);
      return tokenSpan(lp, shown);
    });
  }

  function tokenSpan(lp, text) {
    const s = el("span", "tok", text);
    // Shade by how unlikely the chosen token was, one step per nat: p > 37% -> none, p < 0.01% -> darkest.
    s.classList.add("lp" + Math.max(0, Math.min(9, Math.floor(-lp.logprob))));
    s.lp = lp;
    return s;
  }

  function showTip(ev) {
    const t = ev.target;
    const tip = $("tip");
    if (!t.classList || !t.classList.contains("tok") || !t.lp) { tip.hidden = true; return; }
    const table = el("table");
    const alts = t.lp.top_logprobs && t.lp.top_logprobs.length ? t.lp.top_logprobs : [t.lp];
    for (const a of alts) {
      const tr = el("tr", a.token === t.lp.token ? "chosen" : "");
      tr.append(el("td", null, JSON.stringify(a.token)), el("td", null, (100 * Math.exp(a.logprob)).toFixed(1) + "%"),
                el("td", null, a.logprob.toFixed(3)));
      table.append(tr);
    }
    tip.replaceChildren(el("div", null, "logprob " + t.lp.logprob.toFixed(3)), table);
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 260) + "px";
    tip.style.top = (ev.clientY + 16) + "px";
  }

  // ---------------------------------------------------------------------------------------------
  // Sending, streaming, stopping

  async function readSSE(resp, onData) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buf += decoder.decode(value, {stream: true});
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  async function send() {
    if (controller) return;
    takeComposer();   // with an empty composer, Send asks again for the reply on screen instead
    let body;
    try {
      body = buildRequest();
    } catch (e) {
      showError("not sent", e.message);
      return;
    }
    hideError();
    controller = new AbortController();
    setBusy(true);
    const reply = current = new Reply(Number.isInteger(body.n) && body.n > 0 && body.n <= 16 ? body.n : 1, performance.now());
    const events = responsesMode() ? new ResponsesEvents() : null;
    try {
      const resp = await fetch(endpoint(), {method: "POST", headers: headers(), body: JSON.stringify(body),
                                            signal: controller.signal});
      if (!resp.ok) {
        showError("HTTP " + resp.status, await resp.text());
        reply.failed = true;
        reply.setState("error");
        $("replies").replaceChildren();
        current = null;
        return;
      }
      await readSSE(resp, (ev) => {
        const chunk = events ? events.chunk(ev) : ev;
        if (chunk) reply.onEvent(chunk);
      });
      reply.setState(reply.failed ? "error" : "done");
    } catch (e) {
      if (e.name === "AbortError") {
        reply.setState("stopped");
        reply.choices.forEach((c) => c.root.classList.add("state-stopped"));
      } else {
        reply.failed = true;
        reply.setState("error");
        showError("network", String(e));
      }
    } finally {
      controller = null;
      setBusy(false);
    }
  }

  function stop() {
    // Aborting the fetch closes the connection; the server cancels the decoder request as on any
    // client disconnect.
    if (controller) controller.abort();
  }

  // ---------------------------------------------------------------------------------------------
  // Copy as curl / openai-python (the request Send would make; the key comes from the environment)

  function py(v, indent = "") {
    if (v === null) return "None";
    if (v === true) return "True";
    if (v === false) return "False";
    if (typeof v === "number" || typeof v === "string") return JSON.stringify(v);
    const inner = indent + "    ";
    if (Array.isArray(v)) {
      return v.length ? "[\n" + v.map((x) => inner + py(x, inner) + ",\n").join("") + indent + "]" : "[]";
    }
    const keys = Object.keys(v);
    return keys.length ? "{\n" + keys.map((k) => inner + JSON.stringify(k) + ": " + py(v[k], inner) + ",\n").join("") + indent + "}" : "{}";
  }

  function asCurl(body) {
    const json = JSON.stringify(body, null, 2).replace(/'/g, "'\\''");
    return ["curl -sN " + location.origin + endpoint(),
            "  -H 'Content-Type: application/json'",
            ...(apiKey() ? ['  -H "Authorization: Bearer $OPENAI_API_KEY"'] : []),
            "  -d '" + json + "'"].join(" \\\n") + "\n";
  }

  function asPython(body) {
    const args = [];
    const extra = {};
    const responses = responsesMode();
    for (const [k, v] of Object.entries(body)) {
      if ((responses ? PY_EXTRA_RESPONSES : PY_EXTRA).has(k)) extra[k] = v;
      else args.push("    " + k + "=" + py(v, "    ") + ",");
    }
    if (Object.keys(extra).length) args.push("    extra_body=" + py(extra, "    ") + ",");
    const head = [
      "import os",
      "",
      "from openai import OpenAI",
      "",
      "client = OpenAI(base_url=" + JSON.stringify(location.origin + API) + ", api_key=os.environ.get(\"OPENAI_API_KEY\", \"unused\"))",
    ];
    if (responses) {
      return [...head,
        "stream = client.responses.create(",
        ...args,
        ")",
        "for event in stream:",
        "    if event.type == \"response.output_text.delta\":",
        "        print(event.delta, end=\"\", flush=True)",
        "    elif event.type in (\"response.completed\", \"response.incomplete\"):",
        "        print(\"\\n\", event.response.usage)",
        "",
      ].join("\n");
    }
    return [...head,
      "stream = client.chat.completions.create(",
      ...args,
      ")",
      "for chunk in stream:",
      "    for choice in chunk.choices:",
      "        print(choice.delta.content or \"\", end=\"\", flush=True)",
      "    if chunk.usage:",
      "        print(\"\\n\", chunk.usage)",
      "",
    ].join("\n");
  }

  function copy(make) {
    let text;
    try {
      text = make(buildRequest());
    } catch (e) {
      showError("not built", e.message);
      return;
    }
    $("copied").textContent = text;
    $("copied").hidden = false;
    if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => { /* shown below the buttons anyway */ });
  }

  // ---------------------------------------------------------------------------------------------
  // Start-up

  async function loadModels() {
    const info = $("server-info");
    try {
      const resp = await fetch(API + "/models", {headers: headers()});
      if (!resp.ok) {
        info.textContent = resp.status === 401 ? "this server needs an API key" : "GET /v1/models: HTTP " + resp.status;
        return;
      }
      const list = (await resp.json()).data || [];
      const select = $("model");
      const previous = select.value;
      select.replaceChildren(...list.map((m) => new Option(m.id, m.id)));
      if (previous) select.value = previous;
      const meta = list[0] && list[0].metadata;
      if (meta) {
        info.textContent = "context " + meta.context_length + " tokens";
        const hint = $("max-tokens-hint");
        if (hint) hint.textContent = "empty: up to " + meta.max_tokens + " (the server's cap)";
      } else {
        info.textContent = "";
      }
    } catch (e) {
      info.textContent = "cannot reach the server: " + e;
    }
  }

  async function start() {
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_STORE) || "";
    key.addEventListener("change", () => {
      sessionStorage.setItem(KEY_STORE, key.value.trim());
      loadModels();
    });
    $("send").addEventListener("click", send);
    $("stop").addEventListener("click", stop);
    $("add").addEventListener("click", takeComposer);
    $("clear").addEventListener("click", () => {
      turns = [];
      current = null;
      $("replies").replaceChildren();
      delete $("replies").dataset.state;
      hideError();
      renderTurns();
    });
    $("copy-curl").addEventListener("click", () => copy(asCurl));
    $("copy-python").addEventListener("click", () => copy(asPython));
    $("message").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); }
    });
    $("new-role").addEventListener("change", () => {
      const tool = $("new-role").value === "tool";
      $("tool-call-id").hidden = !tool;
      if (tool && !$("tool-call-id").value && current) {
        const m = current.message();
        if (m && m.tool_calls) $("tool-call-id").value = m.tool_calls[0].id;
      }
    });
    $("rf-type").addEventListener("change", () => {
      const t = $("rf-type").value;
      $("rf-schema").hidden = $("rf-name").hidden = t !== "json_schema";
      $("rf-regex").hidden = t !== "regex";
    });
    $("tool-choice").addEventListener("change", () => { $("tool-choice-name").hidden = $("tool-choice").value !== "function"; });
    $("api-mode").addEventListener("change", syncMode);
    document.addEventListener("mouseover", showTip);
    try {
      const resp = await fetch("/openapi.json");
      buildParams(parseDoc(await resp.text()));
      syncMode();
    } catch (e) {
      showError("GET /openapi.json", String(e));
    }
    await loadModels();
    document.body.dataset.ready = "1";
  }

  start();
})();
