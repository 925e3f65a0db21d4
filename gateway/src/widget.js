/* Switchboard chat widget. Embed on a page with
 *   <script src="https://<gateway>/widget.js" data-line="site" async></script>
 * The same script is the corporate chat on a team line (data-line="team"):
 * an employee signs in with their extension and password once per browser.
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
    "#sb-chat .sb-chat-sign-in{display:flex;flex-direction:column;gap:6px;padding:10px}" +
    "#sb-chat .sb-chat-sign-in input{padding:6px;font:inherit}" +
    "#sb-chat .sb-chat-author{font-weight:bold}" +
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

  var team = false;
  function bubble(m) {
    var el = document.createElement("div");
    var mine = team ? m.from === identity.visitor : m.from !== "manager";
    el.className = "sb-chat-msg sb-from-" + (mine ? "visitor" : "manager");
    if (team && !mine) {
      var author = document.createElement("span");
      author.className = "sb-chat-author";
      author.textContent = m.from + ": ";
      el.appendChild(author);
    }
    el.appendChild(document.createTextNode(m.text));
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
    if (!el) { el = bubble(m); list.appendChild(el); }
    if (m.client_id) el.setAttribute("data-client-id", m.client_id);
    if (m.seq) { el.setAttribute("data-seq", m.seq); el.removeAttribute("data-pending"); }
    list.scrollTop = list.scrollHeight;
    if (m.from === "manager" && !panel.classList.contains("sb-open")) launcher.setAttribute("data-unread", "");
  }
  function showPending(p) {
    if (findBy("data-client-id", p.id)) return;
    var el = bubble({ from: team ? identity.visitor : "visitor", text: p.text });
    el.setAttribute("data-client-id", p.id);
    el.setAttribute("data-pending", "");
    list.appendChild(el);
    list.scrollTop = list.scrollHeight;
  }

  // A team line's sign-in form, shown when the gateway asks for it.
  var signIn = document.createElement("form");
  signIn.className = "sb-chat-sign-in";
  var userInput = document.createElement("input");
  userInput.name = "user";
  userInput.placeholder = "Extension";
  userInput.autocomplete = "username";
  var passwordInput = document.createElement("input");
  passwordInput.name = "password";
  passwordInput.type = "password";
  passwordInput.placeholder = "Password";
  passwordInput.autocomplete = "current-password";
  var signInButton = document.createElement("button");
  signInButton.type = "submit";
  signInButton.textContent = "Sign in";
  signIn.appendChild(userInput);
  signIn.appendChild(passwordInput);
  signIn.appendChild(signInButton);
  var credentials = null;
  var awaitingSignIn = false;
  signIn.addEventListener("submit", function (e) {
    e.preventDefault();
    credentials = { user: userInput.value.trim(), password: passwordInput.value };
    passwordInput.value = "";
    if (signIn.parentNode) signIn.parentNode.removeChild(signIn);
    awaitingSignIn = false;
    connect();
  });

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
      var hello = {
        type: "hello", visitor: identity.visitor, token: identity.token,
        page: location.href, title: document.title, referrer: document.referrer, landing: landing
      };
      if (credentials) { hello.user = credentials.user; hello.password = credentials.password; credentials = null; }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === "sign_in") {
        awaitingSignIn = true;
        identity = {};
        save(localStorage, key, identity);
        if (!signIn.parentNode) panel.insertBefore(signIn, list);
        if (m.error && credentials === null) signIn.setAttribute("data-error", m.error);
      } else if (m.type === "welcome") {
        wait = 1000;
        team = m.team === true;
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
      if (awaitingSignIn) return;
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
