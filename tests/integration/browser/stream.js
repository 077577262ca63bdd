// The browser side of browser.test.mjs. Opens the workspace stream with the
// browser's WebSocket (token in the "bearer.<token>" subprotocol: a browser
// cannot set headers), waits for hello, posts a message with fetch() from this
// origin (a preflighted cross-origin request: it needs the region's CORS),
// then waits for that message's event on the stream. Everything it learns goes
// into the DOM, where the test reads it: #state ends as "ok" or "error", and
// #result holds the details as JSON.
'use strict';

(function () {
  const p = new URLSearchParams(location.hash.slice(1));
  const api = p.get('api');
  const workspace = p.get('workspace');
  const channel = p.get('channel');
  const token = p.get('token');
  const text = p.get('text');
  const out = { state: 'running', steps: [] };

  function render() {
    document.getElementById('state').textContent = out.state;
    document.getElementById('result').textContent = JSON.stringify(out, null, 1);
  }
  function step(s) {
    out.steps.push(s);
    render();
  }
  function finish(state, error) {
    if (out.state !== 'running') return;
    out.state = state;
    if (error) out.error = error;
    render();
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'done');
  }
  // Done when both halves are in: the POST was accepted and its event came back.
  function check() {
    if (out.posted && out.posted.status === 201 && out.event) {
      if (out.event.payload.id !== out.posted.id) finish('error', 'the event is not the posted message');
      else finish('ok');
    }
  }

  function post() {
    step('posting');
    fetch(`${api}/v1/workspaces/${workspace}/channels/${channel}/messages`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ text }),
    })
      .then(async (r) => {
        const body = await r.json().catch(() => null);
        // Readable only when the region exposes it (Access-Control-Expose-Headers).
        out.posted = { status: r.status, id: body && body.message ? body.message.id : null, request_id: r.headers.get('x-request-id') };
        step(`posted ${r.status}`);
        if (r.status !== 201) finish('error', `POST answered ${r.status}: ${JSON.stringify(body)}`);
        else check();
      })
      .catch((e) => finish('error', `fetch failed: ${e.name}: ${e.message}`));
  }

  const ws = new WebSocket(`${api.replace(/^http/, 'ws')}/v1/workspaces/${workspace}/stream`, ['meridian.v1', `bearer.${token}`]);
  ws.onopen = () => {
    out.protocol = ws.protocol;
    step('open');
  };
  ws.onmessage = (m) => {
    const f = JSON.parse(m.data);
    if (f.type === 'hello') {
      out.hello_seq = f.seq;
      step(`hello ${f.seq}`);
      post();
    } else if (f.type === 'event') {
      const e = f.event;
      const li = document.createElement('li');
      li.dataset.seq = e.seq;
      li.dataset.type = e.type;
      li.textContent = e.payload.text === undefined ? e.type : e.payload.text;
      document.getElementById('events').appendChild(li);
      step(`event ${e.seq} ${e.type}`);
      if (e.type === 'message.created' && e.payload.text === text) {
        out.event = { seq: e.seq, type: e.type, workspace_id: e.workspace_id, channel_id: e.channel_id, payload: e.payload };
        check();
      }
    } else {
      step(`frame ${f.type}`);
    }
  };
  ws.onerror = () => step('websocket error');
  ws.onclose = (e) => {
    out.close = { code: e.code, reason: e.reason };
    step(`closed ${e.code}`);
    finish('error', `the stream closed (${e.code} ${e.reason}) before the event arrived`);
  };
  render();
})();
