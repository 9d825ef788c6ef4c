// The tracking page: one WebSocket to /v1/orders/{id}/track, a plot of the
// rider heading to the delivery address (plain SVG, no map tiles), and the
// order's status timeline. The socket reconnects with capped, jittered
// exponential backoff; on each connect the server sends the current status
// and the rider's latest position, so nothing needs replaying here.
"use strict";
(function () {
  const orderID = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const svgNS = "http://www.w3.org/2000/svg";
  const W = 400, H = 300, PAD = 28;
  const STEPS = ["placed", "paid", "accepted", "picked_up", "near", "delivered"];
  const FINAL = ["delivered", "cancelled", "payment_failed"];
  const MAX_TRAIL = 300;

  const state = {
    dest: null,        // {lat, lng}
    trail: [],         // [{lat, lng}], oldest first
    fix: null,         // newest fix
    shown: null,       // {lat, lng} the marker is drawn at (animated)
    anim: null,        // {from, to, start}
    lastSeq: 0,
    firstLiveSeq: 0,   // the first fix the socket brought: the stored path ends before it
    rider: "",
    status: "",
    statusAt: 0,
    seen: {},          // status (and "near") -> Date
    speeds: [],        // recent {at, kmh}, for the ETA
    attempt: 0,
    ended: false,
  };

  $("order-id").textContent = orderID.slice(0, 8);

  // --- projection ---------------------------------------------------------
  // Equirectangular around the points' mean latitude: exact enough over a
  // city, and it needs no tiles.
  function bounds() {
    const pts = state.trail.slice();
    if (state.dest) pts.push(state.dest);
    if (state.shown) pts.push(state.shown);
    if (pts.length === 0) return null;
    let minLat = Infinity, maxLat = -Infinity, minLng = Infinity, maxLng = -Infinity;
    for (const p of pts) {
      minLat = Math.min(minLat, p.lat); maxLat = Math.max(maxLat, p.lat);
      minLng = Math.min(minLng, p.lng); maxLng = Math.max(maxLng, p.lng);
    }
    const midLat = (minLat + maxLat) / 2;
    const k = Math.cos(midLat * Math.PI / 180) || 1;
    // At least ~500 m across, so a standing rider is not a blown-up dot.
    const span = Math.max((maxLat - minLat), (maxLng - minLng) * k, 0.005);
    const scale = Math.min((W - 2 * PAD) / span, (H - 2 * PAD) / span);
    return { midLat, midLng: (minLng + maxLng) / 2, k, scale };
  }
  function project(b, p) {
    return {
      x: W / 2 + (p.lng - b.midLng) * b.k * b.scale,
      y: H / 2 - (p.lat - b.midLat) * b.scale,
    };
  }

  function drawGrid() {
    const g = $("grid");
    for (let i = 1; i < 8; i++) {
      const v = document.createElementNS(svgNS, "line");
      v.setAttribute("x1", i * 50); v.setAttribute("x2", i * 50);
      v.setAttribute("y1", 0); v.setAttribute("y2", H);
      g.appendChild(v);
    }
    for (let i = 1; i < 6; i++) {
      const h = document.createElementNS(svgNS, "line");
      h.setAttribute("y1", i * 50); h.setAttribute("y2", i * 50);
      h.setAttribute("x1", 0); h.setAttribute("x2", W);
      g.appendChild(h);
    }
  }

  function draw() {
    const b = bounds();
    if (!b) return;
    if (state.dest) {
      const d = project(b, state.dest);
      $("dest").setAttribute("transform", `translate(${d.x.toFixed(1)},${d.y.toFixed(1)})`);
      $("dest").setAttribute("visibility", "visible");
    }
    $("trail").setAttribute("points", state.trail.map((p) => {
      const q = project(b, p);
      return `${q.x.toFixed(1)},${q.y.toFixed(1)}`;
    }).join(" "));
    const rider = $("rider");
    if (state.shown && state.fix) {
      const r = project(b, state.shown);
      rider.setAttribute("transform", `translate(${r.x.toFixed(1)},${r.y.toFixed(1)}) rotate(${state.fix.heading || 0})`);
      rider.setAttribute("visibility", "visible");
      const leg = $("leg");
      if (state.dest && !FINAL.includes(state.status)) {
        const d = project(b, state.dest);
        leg.setAttribute("x1", r.x.toFixed(1)); leg.setAttribute("y1", r.y.toFixed(1));
        leg.setAttribute("x2", d.x.toFixed(1)); leg.setAttribute("y2", d.y.toFixed(1));
        leg.setAttribute("visibility", "visible");
      } else {
        leg.setAttribute("visibility", "hidden");
      }
    }
  }

  // The marker glides to each new fix instead of jumping.
  function animate(now) {
    const a = state.anim;
    if (!a) return;
    const t = Math.min(1, (now - a.start) / 600);
    const e = t * (2 - t);
    state.shown = { lat: a.from.lat + (a.to.lat - a.from.lat) * e, lng: a.from.lng + (a.to.lng - a.from.lng) * e };
    draw();
    if (t < 1) requestAnimationFrame(animate); else state.anim = null;
  }

  // --- messages -----------------------------------------------------------
  // The path travelled so far, from the history: the trail then starts
  // where the rider started, not where the page was opened.
  async function loadPath() {
    try {
      const res = await fetch(`/v1/orders/${encodeURIComponent(orderID)}/path?max=${MAX_TRAIL}`, {
        headers: { Authorization: `Bearer ${token}` }, cache: "no-store",
      });
      if (!res.ok) return;
      const p = await res.json();
      const all = p.points || [];
      if (all.length === 0) return;
      // The current rider's points; live fixes that came meanwhile stay
      // after them.
      const rider = state.rider || all[all.length - 1].rider_id;
      const before = state.firstLiveSeq || Infinity;
      const pts = all.filter((q) => q.rider_id === rider && q.seq < before);
      if (!state.rider) {
        state.rider = rider;
        $("rider-id").textContent = rider;
      }
      state.trail = pts.map((q) => ({ lat: q.lat, lng: q.lng })).concat(state.trail).slice(-MAX_TRAIL);
      $("map").dataset.path = String(state.trail.length);
      draw();
    } catch (e) { /* the live trail still grows */ }
  }

  function onLocation(m) {
    // The server never sends an older fix; a reconnect may resend the
    // newest one, which changes nothing.
    if (m.rider_id !== state.rider) {
      if (state.rider) { state.lastSeq = 0; state.firstLiveSeq = 0; state.trail = []; state.shown = null; } // another rider: another path
      state.rider = m.rider_id;
      $("rider-id").textContent = m.rider_id;
    }
    if (!state.firstLiveSeq) state.firstLiveSeq = m.seq;
    if (m.seq <= state.lastSeq) return;
    state.lastSeq = m.seq;
    state.fix = m;
    const p = { lat: m.lat, lng: m.lng };
    state.trail.push(p);
    $("map").dataset.path = String(state.trail.length);
    if (state.trail.length > MAX_TRAIL) state.trail.shift();
    const rider = $("rider");
    rider.dataset.seq = String(m.seq);
    rider.dataset.lat = String(m.lat);
    rider.dataset.lng = String(m.lng);
    $("speed").textContent = `${Math.round(m.speed_kmh)} km/h`;
    state.speeds.push({ at: Date.parse(m.ts), kmh: m.speed_kmh });
    if (state.speeds.length > 240) state.speeds.shift();
    $("eta").textContent = eta();
    $("last-fix").textContent = new Date(m.ts).toLocaleTimeString();
    if (state.dest) $("distance").textContent = formatDistance(distance(p, state.dest));
    if (!state.shown) {
      state.shown = p; draw();
    } else {
      state.anim = { from: state.shown, to: p, start: performance.now() };
      requestAnimationFrame(animate);
    }
  }

  function onStatus(m) {
    if (m.destination) state.dest = { lat: m.destination.lat, lng: m.destination.lng };
    const at = Date.parse(m.at);
    state.seen[m.status] = at;
    if (at >= state.statusAt) { state.status = m.status; state.statusAt = at; }
    renderTimeline();
    if (FINAL.includes(state.status)) { state.ended = true; $("near").hidden = true; }
    $("eta").textContent = eta();
    draw();
  }

  function onNear(m) {
    state.seen.near = Date.parse(m.at);
    $("near").hidden = FINAL.includes(state.status);
    document.body.dataset.near = "true";
    renderTimeline();
  }

  // The ETA: the straight line to the door, stretched by a fifth for the
  // streets, at the rider's speed over the last minute (at least walking
  // pace, so a rider waiting at a light does not read as "never").
  function eta() {
    if (!state.dest || !state.fix || state.status !== "picked_up") return "–";
    const now = Date.parse(state.fix.ts);
    const recent = state.speeds.filter((s) => now - s.at <= 60000);
    const kmh = Math.max(5, recent.reduce((a, s) => a + s.kmh, 0) / Math.max(1, recent.length));
    const metres = distance({ lat: state.fix.lat, lng: state.fix.lng }, state.dest) * 1.2;
    const min = Math.round(metres / (kmh * 1000 / 60));
    return min < 1 ? "under a minute" : `about ${min} min`;
  }

  function renderTimeline() {
    const rank = STEPS.indexOf(state.status);
    for (const li of $("timeline").children) {
      const s = li.dataset.status;
      const i = STEPS.indexOf(s);
      li.classList.remove("done", "current");
      if (s === "near") li.classList.toggle("off", !(s in state.seen)); // only once it happened
      if (i < 0) {
        li.classList.toggle("off", !(s in state.seen));
        if (s === state.status) li.classList.add("current");
      } else if (s === state.status) {
        li.classList.add(s === "delivered" ? "done" : "current");
      } else if (rank >= 0 && i < rank) {
        li.classList.add("done");
      } else if (s in state.seen) {
        li.classList.add("done");
      }
      const t = li.querySelector("time");
      t.textContent = s in state.seen ? new Date(state.seen[s]).toLocaleTimeString() : "";
    }
    document.body.dataset.status = state.status;
  }

  function distance(a, b) {
    const R = 6371e3, rad = Math.PI / 180;
    const dLat = (b.lat - a.lat) * rad, dLng = (b.lng - a.lng) * rad;
    const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLng / 2) ** 2;
    return 2 * R * Math.asin(Math.sqrt(h));
  }
  function formatDistance(m) {
    return m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(1)} km`;
  }

  // --- connection ---------------------------------------------------------
  function setConn(s, text) {
    const el = $("conn");
    el.dataset.state = s;
    el.textContent = text;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/v1/orders/${encodeURIComponent(orderID)}/track?token=${encodeURIComponent(token)}`;
    setConn("connecting", state.attempt ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      retry();
      return;
    }
    ws.onopen = () => setConn("live", "live");
    ws.onmessage = (ev) => {
      state.attempt = 0;
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.type === "location") onLocation(m);
      else if (m.type === "status") onStatus(m);
      else if (m.type === "rider_near") onNear(m);
    };
    ws.onclose = () => {
      if (state.ended) {
        setConn("ended", "delivery finished");
        return;
      }
      retry();
    };
  }

  function retry() {
    // 0.5 s, 1 s, 2 s … capped at 30 s, each with jitter so a restarted
    // server is not hit by every page at once.
    const base = Math.min(30000, 500 * 2 ** state.attempt);
    const wait = Math.round(base / 2 + Math.random() * base / 2);
    state.attempt++;
    setConn("reconnecting", `reconnecting in ${Math.ceil(wait / 1000)} s`);
    setTimeout(connect, wait);
  }

  drawGrid();
  renderTimeline();
  connect();
  loadPath();
})();
