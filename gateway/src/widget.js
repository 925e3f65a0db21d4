/* Switchboard chat widget. Embed on a page with
 *   <script src="https://<gateway>/widget.js" data-line="site" async></script>
 * The visitor's id and token live in localStorage, so the conversation
 * continues across page loads; the first page of the visit (with its UTM
 * tags) is remembered for the session. Messages not yet acknowledged by the
 * gateway are kept and sent again after a reconnect (the gateway takes each
 * message id once). */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.SwitchboardChat) return;
  var line = script.getAttribute("data-line") || "site";
  var base = new URL(script.src, location.href);
  var wsUrl = (base.protocol === "https:" ? "wss://" : "ws://") + base.host +
    "/v1/chat/" + encodeURIComponent(line) + "/ws";
  var key = "switchboard-chat:" + line;

  function load(store, k, fallback) {
    try { return JSON.parse(store.getItem(k)) || fallback; } catch (e) { return fallback; }
  }
  function save(store, k, v) {
    try { store.setItem(k, JSON.stringify(v)); } catch (e) { /* private mode */ }
  }

  var identity = load(localStorage, key, {});
  var pending = load(localStorage, key + ":pending", []);
  var landing = load(sessionStorage, key + ":landing", null);
  if (!landing) { landing = location.href; save(sessionStorage, key + ":landing", landing); }

  // ---------------------------------------------------------------- view
  var css = "#sb-chat-launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;" +
    "border:0;border-radius:24px;padding:12px 18px;background:#1f6feb;color:#fff;font:15px sans-serif;cursor:pointer}" +
    "#sb-chat{position:fixed;right:20px;bottom:76px;z-index:2147483000;width:320px;max-height:460px;" +
    "display:none;flex-direction:column;background:#fff;border:1px solid #ccd;border-radius:10px;" +
    "box-shadow:0 6px 24px rgba(0,0,0,.18);font:14px sans-serif;color:#222}" +
    "#sb-chat.sb-open{display:flex}" +
    "#sb-chat .sb-chat-title{padding:10px 12px;background:#1f6feb;color:#fff;border-radius:10px 10px 0 0}" +
    "#sb-chat .sb-chat-messages{flex:1;overflow-y:auto;padding:8px;min-height:160px}" +
    "#sb-chat .sb-chat-msg{margin:4px 0;padding:6px 9px;border-radius:8px;max-width:85%;white-space:pre-wrap;word-wrap:break-word}" +
    "#sb-chat .sb-from-visitor{margin-left:auto;background:#e7f0ff}" +
    "#sb-chat .sb-from-manager{background:#f1f1f1}" +
    "#sb-chat .sb-chat-msg[data-pending]{opacity:.6}" +
    "#sb-chat form{display:flex;border-top:1px solid #eee}" +
    "#sb-chat textarea{flex:1;border:0;padding:8px;resize:none;font:inherit;height:44px}" +
    "#sb-chat button{border:0;background:none;color:#1f6feb;padding:0 12px;cursor:pointer;font:inherit}" +
    "#sb-chat-launcher[data-unread]::after{content:' \\25CF';color:#ffd33d}";
  var style = document.createElement("style");
  style.textContent = css;
  var launcher = document.createElement("button");
  launcher.id = "sb-chat-launcher";
  launcher.type = "button";
  launcher.textContent = "Chat";
  var panel = document.createElement("div");
  panel.id = "sb-chat";
  panel.setAttribute("role", "dialog");
  var title = document.createElement("div");
  title.className = "sb-chat-title";
  title.textContent = "Chat";
  var list = document.createElement("div");
  list.className = "sb-chat-messages";
  list.setAttribute("aria-live", "polite");
  var form = document.createElement("form");
  var input = document.createElement("textarea");
  input.className = "sb-chat-input";
  input.placeholder = "Your message";
  input.setAttribute("aria-label", "Your message");
  var sendButton = document.createElement("button");
  sendButton.className = "sb-chat-send";
  sendButton.type = "submit";
  sendButton.textContent = "Send";
  form.appendChild(input);
  form.appendChild(sendButton);
  panel.appendChild(title);
  panel.appendChild(list);
  panel.appendChild(form);

  function setOpen(open) {
    panel.classList.toggle("sb-open", open);
    if (open) { launcher.removeAttribute("data-unread"); input.focus(); }
    save(sessionStorage, key + ":open", open);
  }
  launcher.addEventListener("click", function () { setOpen(!panel.classList.contains("sb-open")); });

  function bubble(from, text) {
    var el = document.createElement("div");
    el.className = "sb-chat-msg sb-from-" + (from === "manager" ? "manager" : "visitor");
    el.textContent = text;
    return el;
  }
  function findBy(attr, value) {
    var all = list.querySelectorAll(".sb-chat-msg");
    for (var i = 0; i < all.length; i++) if (all[i].getAttribute(attr) === String(value)) return all[i];
    return null;
  }
  function show(m) {
    if (m.seq && findBy("data-seq", m.seq)) return;
    var el = m.client_id ? findBy("data-client-id", m.client_id) : null;
    if (!el) { el = bubble(m.from, m.text); list.appendChild(el); }
    if (m.client_id) el.setAttribute("data-client-id", m.client_id);
    if (m.seq) { el.setAttribute("data-seq", m.seq); el.removeAttribute("data-pending"); }
    list.scrollTop = list.scrollHeight;
    if (m.from === "manager" && !panel.classList.contains("sb-open")) launcher.setAttribute("data-unread", "");
  }
  function showPending(p) {
    if (findBy("data-client-id", p.id)) return;
    var el = bubble("visitor", p.text);
    el.setAttribute("data-client-id", p.id);
    el.setAttribute("data-pending", "");
    list.appendChild(el);
    list.scrollTop = list.scrollHeight;
  }

  // ---------------------------------------------------------------- wire
  var ws = null;
  var ready = false;
  var wait = 1000;
  function transmit(p) {
    if (ready) ws.send(JSON.stringify({ type: "message", id: p.id, text: p.text }));
  }
  function connect() {
    ready = false;
    ws = new WebSocket(wsUrl);
    ws.onopen = function () {
      ws.send(JSON.stringify({
        type: "hello", visitor: identity.visitor, token: identity.token,
        page: location.href, title: document.title, referrer: document.referrer, landing: landing
      }));
    };
    ws.onmessage = function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === "welcome") {
        wait = 1000;
        identity = { visitor: m.visitor, token: m.token };
        save(localStorage, key, identity);
        if (m.title) title.textContent = m.title;
        list.textContent = "";
        m.history.forEach(show);
        ready = true;
        pending.forEach(function (p) { showPending(p); transmit(p); });
      } else if (m.type === "message") {
        show(m);
      } else if (m.type === "ack") {
        pending = pending.filter(function (p) { return p.id !== m.id; });
        save(localStorage, key + ":pending", pending);
        var acked = findBy("data-client-id", m.id);
        if (acked) { acked.setAttribute("data-seq", m.seq); acked.removeAttribute("data-pending"); }
      } else if (m.type === "error" && m.id && m.retry === false) {
        pending = pending.filter(function (p) { return p.id !== m.id; });
        save(localStorage, key + ":pending", pending);
        var el = findBy("data-client-id", m.id);
        if (el) { el.setAttribute("data-error", m.error); el.title = m.error; }
      }
    };
    ws.onclose = function () {
      ready = false;
      setTimeout(connect, wait);
      wait = Math.min(wait * 2, 30000);
    };
  }

  function say(text) {
    text = String(text || "").trim();
    if (!text) return;
    var p = { id: Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10), text: text };
    pending.push(p);
    save(localStorage, key + ":pending", pending);
    showPending(p);
    transmit(p);
  }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    say(input.value);
    input.value = "";
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
  });

  function mount() {
    document.head.appendChild(style);
    document.body.appendChild(panel);
    document.body.appendChild(launcher);
    setOpen(load(sessionStorage, key + ":open", false) === true);
    connect();
  }
  window.SwitchboardChat = {
    open: function () { setOpen(true); },
    visitor: function () { return identity.visitor; },
    say: say
  };
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
