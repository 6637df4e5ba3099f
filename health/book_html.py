"""The HTML of the sidecar's ``/book/<SYMBOL>`` page: plain HTML, CSS and JavaScript, no build.

Kept in a module (not a data file) so that it is part of any install of the package. The page
fetches ``/book/<SYMBOL>/snapshot`` once, then follows ``/book/<SYMBOL>/events`` (server-sent
events, one JSON picture per event, see :meth:`market_data.bookview.BookView.to_dict`) and
redraws the ladder, the depth chart and the trades. ``__SYMBOL__`` is replaced by the symbol.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__SYMBOL__ book - market-data</title>
<style>
  :root { --bg: #0f1318; --panel: #161b22; --fg: #d6dde6; --dim: #7d8590;
          --bid: #2ea043; --ask: #e5534b; --warn: #d29922; }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 16px 20px; background: var(--bg); color: var(--fg);
         font: 14px/1.35 ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; }
  header { display: flex; align-items: baseline; gap: 14px; flex-wrap: wrap; }
  h1 { font-size: 22px; margin: 0; }
  #badge { padding: 2px 10px; border-radius: 4px; font-weight: bold; text-transform: uppercase;
           background: var(--warn); color: #000; }
  #badge.live { background: var(--bid); color: #fff; }
  #badge.resyncing, #badge.down, #badge.disconnected { background: var(--ask); color: #fff; }
  #message { color: var(--fg); }
  #facts { color: var(--dim); margin: 6px 0 14px; }
  main { display: grid; grid-template-columns: minmax(300px, 380px) 1fr; gap: 18px; }
  section { background: var(--panel); border-radius: 6px; padding: 10px 12px; }
  h2 { font-size: 13px; color: var(--dim); margin: 0 0 6px; font-weight: normal;
       text-transform: uppercase; letter-spacing: .06em; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th { color: var(--dim); font-weight: normal; text-align: right; padding: 2px 8px; }
  td { text-align: right; padding: 1px 8px; white-space: nowrap; }
  tr.ask .price, .sell { color: var(--ask); }
  tr.bid .price, .buy { color: var(--bid); }
  tr.spread td { color: var(--fg); font-weight: bold; border-top: 1px solid #30363d;
                 border-bottom: 1px solid #30363d; }
  td.bar { position: relative; }
  .untrusted table, .untrusted svg { opacity: .45; }
  #depth { width: 100%; height: 260px; display: block; }
  #depth text { fill: var(--dim); font-size: 11px; }
  .right { display: flex; flex-direction: column; gap: 18px; }
  footer { color: var(--dim); margin-top: 14px; font-size: 12px; }
  a { color: #58a6ff; }
</style>
</head>
<body>
<header>
  <h1 id="symbol">__SYMBOL__</h1>
  <span id="badge" class="waiting">connecting</span>
  <span id="message">connecting to the service...</span>
</header>
<div id="facts">&nbsp;</div>
<main id="content">
  <section>
    <h2>book</h2>
    <table id="ladder">
      <thead><tr><th>bid qty</th><th>price</th><th>ask qty</th></tr></thead>
      <tbody id="ladder-body"></tbody>
    </table>
  </section>
  <div class="right">
    <section>
      <h2>depth</h2>
      <svg id="depth" viewBox="0 0 640 260" preserveAspectRatio="none" role="img"
           aria-label="cumulative depth">
        <path id="bid-area" fill="rgba(46,160,67,.35)" stroke="#2ea043" d=""></path>
        <path id="ask-area" fill="rgba(229,83,75,.35)" stroke="#e5534b" d=""></path>
        <line id="mid-line" x1="320" x2="320" y1="0" y2="240" stroke="#7d8590"
              stroke-dasharray="3,3"></line>
        <text id="x-min" x="2" y="256"></text>
        <text id="x-mid" x="320" y="256" text-anchor="middle"></text>
        <text id="x-max" x="638" y="256" text-anchor="end"></text>
        <text id="y-max" x="4" y="12"></text>
      </svg>
    </section>
    <section>
      <h2>last trades</h2>
      <table id="trades">
        <thead><tr><th>time (UTC)</th><th>side</th><th>price</th><th>qty</th></tr></thead>
        <tbody id="trades-body"></tbody>
      </table>
    </section>
  </div>
</main>
<footer>market-data &middot; live from the service's shared-memory ring &middot;
  <a href="/book/">all symbols</a> &middot; <a href="/ready">/ready</a> &middot;
  <a href="/metrics">/metrics</a></footer>
<script>
"use strict";
const base = location.pathname.replace(/\\/+$/, "");
const $ = (id) => document.getElementById(id);
let lastMessageAt = Date.now();

function decimals(x) {
  const s = String(x);
  if (s.includes("e")) {
    const [m, e] = s.split("e");
    return Math.max(0, Math.min(8, ((m.split(".")[1] || "").length) - Number(e)));
  }
  return Math.min(8, (s.split(".")[1] || "").length);
}
const digitsOf = (xs) => xs.reduce((d, x) => Math.max(d, decimals(x)), 0);
const fmt = (x, d) => Number(x).toFixed(d);
function td(text, cls) {
  const c = document.createElement("td");
  c.textContent = text;
  if (cls) c.className = cls;
  return c;
}
function clock(ms) { return new Date(ms).toISOString().slice(11, 23); }

function drawLadder(book) {
  const body = $("ladder-body");
  const rows = [];
  if (!book) {
    const tr = document.createElement("tr");
    tr.append(td(""), td("no book yet"), td(""));
    body.replaceChildren(tr);
    return;
  }
  const all = book.bids.concat(book.asks);
  const pd = digitsOf(all.map((l) => l[0])), qd = digitsOf(all.map((l) => l[1]));
  for (const [p, q] of book.asks.slice().reverse()) {
    const tr = document.createElement("tr");
    tr.className = "ask";
    tr.append(td(""), td(fmt(p, pd), "price"), td(fmt(q, qd), "qty"));
    rows.push(tr);
  }
  const sp = document.createElement("tr");
  sp.className = "spread";
  const bps = book.mid ? (book.spread / book.mid * 10000).toFixed(2) + " bps" : "";
  sp.append(td("spread"), td(book.spread === null ? "-" : fmt(book.spread, pd)), td(bps));
  rows.push(sp);
  for (const [p, q] of book.bids) {
    const tr = document.createElement("tr");
    tr.className = "bid";
    tr.append(td(fmt(q, qd), "qty"), td(fmt(p, pd), "price"), td(""));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function drawDepth(book) {
  const W = 640, H = 240;
  if (!book || !book.bids.length || !book.asks.length) {
    $("bid-area").setAttribute("d", "");
    $("ask-area").setAttribute("d", "");
    return;
  }
  const cum = (levels) => { let s = 0; return levels.map(([p, q]) => [p, (s += q)]); };
  const bids = cum(book.bids), asks = cum(book.asks);
  const lo = bids[bids.length - 1][0], hi = asks[asks.length - 1][0];
  const top = Math.max(bids[bids.length - 1][1], asks[asks.length - 1][1]) || 1;
  const x = (p) => hi === lo ? W / 2 : (p - lo) / (hi - lo) * W;
  const y = (v) => H - v / top * (H - 16);
  const area = (pts) => {
    let d = "M" + x(pts[0][0]).toFixed(1) + "," + H;
    let prev = 0;
    for (const [p, v] of pts) {
      d += "L" + x(p).toFixed(1) + "," + y(prev).toFixed(1);
      d += "L" + x(p).toFixed(1) + "," + y(v).toFixed(1);
      prev = v;
    }
    return d + "L" + x(pts[pts.length - 1][0]).toFixed(1) + "," + H + "Z";
  };
  $("bid-area").setAttribute("d", area(bids));
  $("ask-area").setAttribute("d", area(asks));
  const pd = digitsOf([lo, hi, book.bids[0][0], book.asks[0][0]]);
  const mx = x(book.mid).toFixed(1);
  $("mid-line").setAttribute("x1", mx);
  $("mid-line").setAttribute("x2", mx);
  $("x-min").textContent = fmt(lo, pd);
  $("x-max").textContent = fmt(hi, pd);
  $("x-mid").textContent = "mid " + fmt(book.mid, pd + 1);
  const qd = digitsOf(book.bids.concat(book.asks).map((l) => l[1]));
  $("y-max").textContent = "cum. qty " + top.toFixed(qd);
}

function drawTrades(trades) {
  const pd = digitsOf(trades.map((t) => t.price)), qd = digitsOf(trades.map((t) => t.quantity));
  const rows = trades.map((t) => {
    const tr = document.createElement("tr");
    tr.className = "trade";
    tr.append(td(clock(t.timestamp)), td(t.side, t.side), td(fmt(t.price, pd), t.side),
              td(fmt(t.quantity, qd)));
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    tr.append(td(""), td(""), td("none yet"), td(""));
    rows.push(tr);
  }
  $("trades-body").replaceChildren(...rows);
}

function draw(v) {
  lastMessageAt = Date.now();
  document.body.dataset.pictures = String(Number(document.body.dataset.pictures || 0) + 1);
  $("badge").textContent = v.condition;
  $("badge").className = v.condition;
  $("message").textContent = v.message;
  const facts = ["source " + (v.source || "?"),
                 v.updates_per_s.toFixed(1) + " updates/s",
                 v.trades_per_s.toFixed(1) + " trades/s"];
  if (v.book) {
    facts.push("u=" + v.book.last_update_id);
    facts.push("event " + clock(v.book.timestamp) + " UTC");
    facts.push("updated " + v.book.age_s.toFixed(1) + " s ago");
    facts.push(v.book.lag_s.toFixed(2) + " s behind the exchange");
  }
  $("facts").textContent = facts.join(" | ");
  $("content").className = v.condition === "live" ? "" : "untrusted";
  drawLadder(v.book);
  drawDepth(v.book);
  drawTrades(v.trades);
}

function disconnected(why) {
  $("badge").textContent = "disconnected";
  $("badge").className = "disconnected";
  $("message").textContent = why;
  $("content").className = "untrusted";
}

fetch(base + "/snapshot" + location.search).then((r) => r.json()).then(draw)
  .catch(() => disconnected("cannot reach the service"));
const events = new EventSource(base + "/events" + location.search);
events.addEventListener("book", (e) => draw(JSON.parse(e.data)));
events.onerror = () => disconnected("lost the connection to the service; retrying");
setInterval(() => {
  if (Date.now() - lastMessageAt > 5000) disconnected("no message from the service for 5 s");
}, 1000);
</script>
</body>
</html>
"""

INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>books - market-data</title>
<style>body { background: #0f1318; color: #d6dde6; font: 14px ui-monospace, monospace;
padding: 16px 20px; } a { color: #58a6ff; }</style></head>
<body><h1>market-data books</h1><ul>__ITEMS__</ul>
<p>Books are read from this service's shared-memory rings (an <code>shm</code> sink).</p>
</body></html>
"""
