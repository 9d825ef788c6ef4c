// The tracking page: one WebSocket to /v1/orders/{id}/track, a map of the
// rider heading to the delivery address (Leaflet, OpenStreetMap tiles from
// the tile server the service names, or a plain grid when there is none or
// its tiles cannot load), the path travelled, an ETA, and the order's status
// timeline. The socket reconnects with capped, jittered exponential backoff;
// on each connect the server sends the current status and the rider's
// latest position, so nothing needs replaying here.
//
// Built with Leaflet into ../web/assets/track.js (npm run build in
// services/tracking/web-src); the page loads nothing from elsewhere but map
// tiles.
import L from "leaflet";

(function () {
  "use strict";
  const orderID = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const STEPS = ["placed", "paid", "accepted", "picked_up", "near", "delivered"];
  const FINAL = ["delivered", "cancelled", "payment_failed"];
  const MAX_TRAIL = 500;

  const state = {
    dest: null,        // {lat, lng}
    trail: [],         // [[lat, lng]], oldest first
    fix: null,         // newest fix
    lastSeq: 0,
    firstLiveSeq: 0,   // the first fix the socket brought: the stored path ends before it
    rider: "",
    status: "",
    statusAt: 0,
    seen: {},          // status (and "near") -> time
    speeds: [],        // recent {at, kmh}, for the ETA
    attempt: 0,
    ended: false,
    fitted: false,
  };

  $("order-id").textContent = orderID.slice(-8);

  // --- the map -------------------------------------------------------------
  const mapEl = $("map");
  const map = L.map(mapEl, { zoomControl: true }).setView([19.07, 72.87], 12);
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');

  // The fallback when there are no tiles: a plain grid, drawn here.
  const Grid = L.GridLayer.extend({
    createTile() {
      const c = document.createElement("canvas");
      c.width = c.height = 256;
      const g = c.getContext("2d");
      g.fillStyle = "#faf8f3";
      g.fillRect(0, 0, 256, 256);
      g.strokeStyle = "#e6e1d6";
      for (let i = 0; i <= 256; i += 64) {
        g.beginPath(); g.moveTo(i + 0.5, 0); g.lineTo(i + 0.5, 256); g.stroke();
        g.beginPath(); g.moveTo(0, i + 0.5); g.lineTo(256, i + 0.5); g.stroke();
      }
      return c;
    },
  });
  let tiles = null;
  let grid = null;
  function useGrid() {
    if (grid) return;
    if (tiles) map.removeLayer(tiles);
    grid = new Grid().addTo(map);
    mapEl.dataset.tiles = "grid";
  }
  if (mapEl.dataset.tiles) {
    tiles = L.tileLayer(mapEl.dataset.tiles, { maxZoom: 19, attribution: mapEl.dataset.attribution });
    let loaded = 0, failed = 0;
    tiles.on("tileload", () => { mapEl.dataset.tilesLoaded = String(++loaded); });
    // Tiles that never load (the server is down, blocked, offline): the
    // grid instead, so the rider still has something to move across.
    tiles.on("tileerror", () => { if (++failed >= 4 && loaded === 0) useGrid(); });
    setTimeout(() => { if (loaded === 0) useGrid(); }, 8000);
    tiles.addTo(map);
  } else {
    useGrid();
  }

  const icon = (id, html, size, anchor) =>
    L.divIcon({ className: "dabba-icon", html, iconSize: size, iconAnchor: anchor });
  const destMarker = L.marker([0, 0], {
    icon: icon("dest", '<svg id="dest" width="28" height="36" viewBox="-14 -34 28 36"><path d="M0,0 C-11,-14 -11,-30 0,-30 C11,-30 11,-14 0,0 Z"></path><circle cx="0" cy="-19" r="4.5"></circle></svg>', [28, 36], [14, 34]),
    keyboard: false, title: "Your door",
  });
  const riderMarker = L.marker([0, 0], {
    icon: icon("rider", '<svg id="rider" width="34" height="34" viewBox="-17 -17 34 34" data-seq="0"><circle class="halo" r="16"></circle><g class="turn"><circle class="body" r="8"></circle><path class="heading" d="M0,-16 L5,-8 L-5,-8 Z"></path></g></svg>', [34, 34], [17, 17]),
    keyboard: false, title: "Your rider", zIndexOffset: 1000,
  });
  const pathLine = L.polyline([], { className: "dabba-path", color: "#e4572e", weight: 4, opacity: 0.75 }).addTo(map);
  const legLine = L.polyline([], { className: "dabba-leg", color: "#6b7385", weight: 2, dashArray: "6 6", opacity: 0.8 }).addTo(map);

  function draw() {
    if (state.dest && !map.hasLayer(destMarker)) destMarker.setLatLng(state.dest).addTo(map);
    pathLine.setLatLngs(state.trail);
    mapEl.dataset.path = String(state.trail.length);
    const at = riderMarker.getLatLng();
    if (state.dest && state.fix && !FINAL.includes(state.status)) legLine.setLatLngs([at, state.dest]);
    else legLine.setLatLngs([]);
    if (!state.fitted && (state.fix || state.trail.length) && state.dest) {
      // Once: rider, path and door in view; after that the reader's zoom
      // and pan are theirs, and the map only follows a rider leaving it.
      const b = L.latLngBounds(state.trail.concat([state.dest]));
      if (state.fix) b.extend(at);
      map.fitBounds(b, { padding: [36, 36], maxZoom: 17 });
      state.fitted = true;
    } else if (state.fix && !map.getBounds().pad(-0.1).contains(at)) {
      map.panTo(at);
    }
  }

  // The marker glides to each new fix instead of jumping.
  let anim = null;
  function glide(to) {
    if (!map.hasLayer(riderMarker)) {
      riderMarker.setLatLng(to).addTo(map);
      draw();
      return;
    }
    anim = { from: riderMarker.getLatLng(), to: L.latLng(to), start: performance.now() };
    requestAnimationFrame(step);
  }
  function step(now) {
    if (!anim) return;
    const t = Math.min(1, (now - anim.start) / 600);
    const e = t * (2 - t);
    riderMarker.setLatLng([anim.from.lat + (anim.to.lat - anim.from.lat) * e, anim.from.lng + (anim.to.lng - anim.from.lng) * e]);
    draw();
    if (t < 1) requestAnimationFrame(step); else anim = null;
  }

  // --- the path travelled so far, from the history -------------------------
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
      if (!state.rider) {
        state.rider = rider;
        $("rider-id").textContent = rider;
      }
      const stored = all.filter((q) => q.rider_id === rider && q.seq < before).map((q) => [q.lat, q.lng]);
      state.trail = stored.concat(state.trail).slice(-MAX_TRAIL);
      draw();
    } catch (e) { /* the live trail still grows */ }
  }

  // --- messages ------------------------------------------------------------
  function onLocation(m) {
    // The server never sends an older fix; a reconnect may resend the
    // newest one, which changes nothing.
    if (m.rider_id !== state.rider) {
      if (state.rider) { state.lastSeq = 0; state.firstLiveSeq = 0; state.trail = []; } // another rider: another path
      state.rider = m.rider_id;
      $("rider-id").textContent = m.rider_id;
    }
    if (!state.firstLiveSeq) state.firstLiveSeq = m.seq;
    if (m.seq <= state.lastSeq) return;
    state.lastSeq = m.seq;
    state.fix = m;
    state.trail.push([m.lat, m.lng]);
    if (state.trail.length > MAX_TRAIL) state.trail.shift();
    $("speed").textContent = `${Math.round(m.speed_kmh)} km/h`;
    $("last-fix").textContent = new Date(m.ts).toLocaleTimeString();
    state.speeds.push({ at: Date.parse(m.ts), kmh: m.speed_kmh });
    if (state.speeds.length > 240) state.speeds.shift();
    if (state.dest) $("distance").textContent = formatDistance(distance(m, state.dest));
    $("eta").textContent = eta();
    glide([m.lat, m.lng]);
    // The marker's element exists once it is on the map. What it shows is
    // in its data attributes too (the browser test reads them).
    const el = $("rider");
    el.dataset.seq = String(m.seq);
    el.dataset.lat = String(m.lat);
    el.dataset.lng = String(m.lng);
    el.querySelector(".turn").style.transform = `rotate(${m.heading || 0}deg)`;
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
    const metres = distance(state.fix, state.dest) * 1.2;
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
      } else if ((rank >= 0 && i < rank) || s in state.seen) {
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

  // --- connection ----------------------------------------------------------
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

  renderTimeline();
  connect();
  loadPath();
})();
