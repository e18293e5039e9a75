// convstream dashboard: one WebSocket, one tile per camera, alerts on the side.
// Everything that comes from the server is put into the DOM with textContent, never as HTML.
"use strict";

(() => {
  const STALE_S = 3; // no frame for this long: the tile greys out and says so
  const HOLD_S = 1.0; // seconds a tile's large score holds its highest (record)
  // A camera analysed at under BEHIND_SHARE of the rate its cap allows (and its source
  // sends), for BEHIND_S in a row: its fps turns amber, "behind" (a server short of CPU
  // analysed 0.8 of 4 frames a second under a green RUNNING: an operator review's)
  const BEHIND_SHARE = 0.5;
  const BEHIND_S = 10;
  // what a failed camera's tile says to do: it stays failed until someone acts
  const FAILED_ADVICE = "fix the camera or the server's config, then reload the server (SIGHUP)";
  // A camera down this long (or given up on, failed) says whom operators call, where the
  // dashboard was given one (--contact): the advice above is for whoever runs the server
  const CALL_AFTER_S = 60;
  const MAX_ALERTS = 100;
  const SPARK_EVERY_MS = 500;

  const $ = (id) => document.getElementById(id);
  // What screen readers are told, each its own line of the live region (added lines are read
  // out; a line replacing another could lose one that came in the same moment).
  const ANNOUNCED = 10;
  // The states of a camera in trouble, those that need someone first: a camera stalled for a
  // second listed ahead of a failed one pushed the failed one into the "…" of a narrow header.
  const DOWN_ORDER = ["failed", "stopped", "reconnecting", "unwatched", "stalled"];
  // Those told to screen readers: not "stalled", a second's gap on a busy network, which said
  // at every flicker would drown the rest (it turns into "reconnecting" if it lasts).
  const TROUBLE = DOWN_ORDER.filter((state) => state !== "stalled");
  function announce(text) {
    const region = $("announce");
    const line = document.createElement("p");
    line.textContent = text;
    region.append(line);
    while (region.children.length > ANNOUNCED) region.firstElementChild.remove();
  }
  const grid = $("grid");
  const tiles = new Map(); // camera id -> Tile
  let socket = null;
  let socketOpen = false;
  let linkHeardAt = 0; // performance.now() of the link's opening or its newest message
  let heardHello = false; // this connection's hello is in
  const DEFAULT_SILENT_S = 40; // until a hello says: the dashboard's 30 s a message and ticks
  const LINK_QUIET_TICKS = 4; // the dashboard's ticks (every 2 s, its hello says) missed
  const KEYS_SHOWN_MS = 20000; // a focused tile's details, after the last key press
  let serverKnown = false; // nothing heard of the server yet: connecting, not unreachable
  let serverOk = false;
  let serverRefused = false;
  const state = {
    historyS: 300,
    threshold: null,
    model: null,
    clock: { dash: 0, at: 0 }, // the dashboard's time at performance.now() == at
    heardAt: 0, // the dashboard's time (dashNow) of the newest message from the dashboard
    silentS: 40, // the longest a live link goes without a message (its hello says)
    serverOkAt: 0, // ... of the newest message saying the server answers
    serverDownSeen: 0, // ... of the first message of this outage saying it does not
    alerts: 0,
    openAlerts: 0, // alerts nobody has marked handled, in any browser (the dashboard counts)
    frames: 0,
    chimes: 0, // tones played for new alerts
    login: false, // the dashboard has an access token (its hello says)
    contact: "", // whom operators call about a camera that is down (--contact)
    started: 0, // when the dashboard this page hears started (its hello says)
    assets: "", // the page's files as that dashboard serves them (a hash; its hello says)
  };
  // Counters for tests and for anyone curious in the console.
  window.convstreamDashboard = { state, tiles };

  // ---- heatmap colours ---------------------------------------------------------------------
  // Relative to the alert threshold: clear a quarter under it and lower, blue to yellow as a
  // cell nears it, red at it and over it, so a glance tells "this spot is why the score is
  // high". The CLI's overlays and the alerts' pictures match (convstream.client.overlay,
  // heat_colours): the same positions on the JET colour map.
  const LUT = new Uint8ClampedArray(256 * 4);
  function buildLut(threshold) {
    const thr = threshold === null ? 0.5 : threshold;
    const lo = Math.max(0, thr - 0.25);
    for (let i = 0; i < 256; i++) {
      const v = i / 255;
      const near = Math.min(1, Math.max(0, (v - lo) / Math.max(1e-6, thr - lo)));
      const t = v >= thr ? 0.875 : 0.625 * near; // on JET: 0.625 yellow, 0.875 red
      const r = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 3)));
      const g = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 2)));
      const b = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - 1)));
      const a = 0.85 * Math.pow(near, 1.5);
      LUT.set([r * 255, g * 255, b * 255, a * 255], i * 4);
    }
  }
  buildLut(null);
  window.convstreamDashboard.heatLut = LUT; // rebuilt in place with each threshold

  function dashNow() {
    if (!state.clock.at) return Date.now() / 1000;
    return state.clock.dash + (performance.now() - state.clock.at) / 1000;
  }

  function fmt(v, digits) {
    return v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(digits);
  }

  // A score as the CLI writes it (score_text): four decimals, cut rather than rounded, so that
  // a score under a threshold never reads as at it. Against `score ≥ 0.8215` a tile's "0.82"
  // could be red or green; 0.82149 reads 0.8214, under it.
  function scoreText(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return (Math.floor(Number(v) * 10000 + 1e-6) / 10000).toFixed(4);
  }

  // A threshold as the CLI and the server's log write it: 4 significant digits (0.8215, 0.962).
  function thresholdText(v) {
    return v === null || v === undefined ? "–" : String(Number(Number(v).toPrecision(4)));
  }

  function clockTime(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
  }

  // Where the server's threshold comes from (ModelInfo.threshold_source), for its tooltip.
  const THRESHOLD_FROM = {
    setting: "the server's setting",
    model: "the model's own",
    default: "a default: the model has none",
  };
  function thresholdFrom(source) {
    return source ? ` (${THRESHOLD_FROM[source] || source})` : "";
  }

  // The date as 2026-12-05, which no locale reads as another day, and the time zone once.
  const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  function isoDate(seconds) {
    const d = new Date(seconds * 1000);
    const two = (v) => String(v).padStart(2, "0");
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}`;
  }

  // The zone's short name at that time ("UTC", "CST", "GMT+1"), as this browser names it.
  function zoneName(seconds) {
    const parts = new Intl.DateTimeFormat([], { timeZoneName: "short" })
      .formatToParts(new Date(seconds * 1000));
    return parts.find((part) => part.type === "timeZoneName")?.value || ZONE;
  }

  function dateTime(seconds) {
    return `${isoDate(seconds)} ${clockTime(seconds)}`;
  }

  // An alert row's time: the clock time, with the date when it is not today's.
  function rowTime(seconds) {
    const day = isoDate(seconds);
    return day === isoDate(dashNow()) ? clockTime(seconds) : `${day} ${clockTime(seconds)}`;
  }

  // How long a state has lasted, coarse as people read it (the CLI's "reconnecting 14s").
  function lasted(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function hourMinute(seconds) {
    return new Date(seconds * 1000).toLocaleTimeString([], {
      hour12: false, hour: "2-digit", minute: "2-digit",
    });
  }

  // "since 14:02 (12 min)": when a trouble began and how long it has lasted; with the date
  // when it began on another day. `earlier`: it began before that, not known how long.
  function sinceText(since, earlier) {
    const day = isoDate(since) === isoDate(dashNow()) ? "" : `${isoDate(since)} `;
    const how = lasted(dashNow() - since);
    // "or earlier (0 s or more)" told nothing: the lower bound only once it is a minute
    const atLeast = dashNow() - since >= 60 ? ` (${how} or more)` : "";
    return `since ${day}${hourMinute(since)}${earlier ? ` or earlier${atLeast}` : ` (${how})`}`;
  }

  // When the dashboard lost the server: the newest sign of it answering (a message saying so,
  // or a frame from it). A page opened during the outage with no frame to go by knows only
  // that it began before its first message said so.
  function serverLost() {
    let at = state.serverOkAt;
    for (const tile of tiles.values()) at = Math.max(at, tile.lastFrameAt);
    if (at) return { at, earlier: false };
    return state.serverDownSeen ? { at: state.serverDownSeen, earlier: true } : null;
  }

  function ago(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 1) return "under a second";
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  // A camera's name in two parts: its start, cut short with "…" where it does not fit, and
  // its end, always shown. A site's ids often differ only at their end: cut at the end,
  // "outbound_lane.12-very-long-camera-id…" was the same on two tiles. The element's text is
  // still the whole id; its tooltip says it too.
  // The end always shown starts early enough to hold where the id first differs from every
  // other camera's (past the few characters a cut start still shows), and at the start of
  // a number: 12 characters made "outbound_lane-07-westgate-a" and "-17-westgate-a" both
  // "outboun… 7-westgate-a", and an alert split lane 07 into "lane-0" and "7-westgate".
  const NAME_END = 12; // characters always shown
  const NAME_HEAD_SHOWN = 6; // characters a cut start shows at least
  const LONG_NAME = 24; // characters: an alert's name longer than this is shown in two parts
  const NAME_END_MOST = 20; // characters: a longer end overflowed its tile (the tooltip says it)
  function nameCut(id) {
    const usual = id.length > NAME_END + 4 ? id.length - NAME_END : id.length;
    let cut = usual;
    for (const other of tiles.keys()) {
      if (other === id) continue;
      let same = 0;
      while (same < id.length && id[same] === other[same]) same++;
      if (same > NAME_HEAD_SHOWN && same < cut) cut = same;
    }
    if (id.length - cut > NAME_END_MOST) cut = usual; // too far back: the usual end
    const digit = /[0-9]/; // a number is not split ("lane-0" over "7-westgate")
    while (cut > 0 && cut < id.length && digit.test(id[cut - 1]) && digit.test(id[cut])) cut--;
    return cut;
  }
  function nameParts(id) {
    const cut = nameCut(id);
    const head = document.createElement("span");
    head.className = "name-head";
    head.textContent = id.slice(0, cut);
    const tail = document.createElement("span");
    tail.className = "name-tail";
    tail.textContent = id.slice(cut);
    return [head, tail];
  }

  // ---- a camera tile ---------------------------------------------------------------------
  let tileCount = 0; // for each tile's heading an id of its own (camera ids are any text)
  class Tile {
    constructor(id) {
      this.id = id;
      const node = $("tile-template").content.firstElementChild.cloneNode(true);
      this.el = node;
      this.el.dataset.camera = id;
      const cam = node.querySelector(".cam");
      cam.replaceChildren(...nameParts(id));
      cam.title = id;
      // a screen reader names the tile by its camera; the header's button for a camera in
      // trouble takes the focus to it, and so does Tab: focused, it says what its tooltips
      // say (tellDetails), which a keyboard reached nowhere else
      cam.id = `cam-${++tileCount}`;
      node.setAttribute("aria-labelledby", cam.id);
      node.tabIndex = -1; // one tile is the grid's Tab stop (roveTiles)
      this.details = node.querySelector(".details");
      this.details.id = `details-${tileCount}`;
      node.setAttribute("aria-describedby", this.details.id);
      this.kind = node.querySelector(".kind");
      this.stateEl = node.querySelector(".state");
      this.frame = node.querySelector("canvas.frame");
      this.heat = node.querySelector("canvas.heat");
      this.view = node.querySelector(".view");
      this.verdict = node.querySelector(".verdict");
      this.ring = node.querySelector(".ring");
      this.peak = false; // whether the picture drawn has a peak to ring
      this.frame.setAttribute("role", "img");
      this.frame.setAttribute("aria-label", `live picture of ${id}`);
      this.notice = node.querySelector(".notice");
      this.stamp = node.querySelector(".stamp");
      this.spark = node.querySelector("canvas.spark");
      this.sparkLabel = node.querySelector(".spark-label");
      this.spark.setAttribute("role", "img"); // named as drawn (drawSpark)
      this.sparkLabel.setAttribute("aria-hidden", "true"); // in the chart's name
      this.v = {};
      for (const k of ["score", "fps", "latency", "dropped", "reconnects"]) {
        this.v[k] = node.querySelector(`.v-${k}`);
      }
      this.history = []; // [time, score]
      this.status = null;
      this.toldDown = false; // screen readers were told it went down, not yet that it is back
      this.frames = 0;
      this.invalidAtFrame = 0; // the camera's frames refused when its last frame came
      this.lastN = 0; // the newest frame number recorded
      this.pending = null; // the newest frame recorded while the page was hidden, not drawn
      this.lastFrameAt = 0; // the dashboard's clock (dashNow) when the newest frame drawn came
      this.score = null;
      this.recent = []; // [capture time, score] of the frames of the last HOLD_S
      this.frameHot = false; // the newest frame itself at or over the threshold
      this.blankSince = null; // the capture time of the first of the blank frames in a row
      this.slowSince = null; // dashNow() of the first status in a row analysed behind its cap
      this.sparkDirty = true;
      this.sparkAt = 0;
      this.aspect = "";
      this.heatPlace = "";
      this.frameCtx = this.frame.getContext("2d", { alpha: false });
      this.heatCtx = this.heat.getContext("2d");
      // Drawn again at once on a new size: until the next tick the old bitmap was stretched
      // over the new box, the newest scores' colour filling the whole chart.
      new ResizeObserver(() => {
        this.sparkDirty = true;
        this.drawSpark(performance.now());
      }).observe(this.spark);
    }

    setStatus(status) {
      const before = this.status ? this.status.state : "";
      this.status = status;
      // Told to screen readers, as the tile shows it to others: a camera going down, and
      // coming back (not "offline": the banner says that of them all at once).
      const now = status.state;
      if (before && now !== before && !["offline", "unknown"].includes(now)) {
        if (TROUBLE.includes(now)) {
          announce(`camera ${this.id} ${now}${status.last_error ? ": " + status.last_error : ""}`);
          this.toldDown = true;
        } else if (now === "running" && this.toldDown) {
          // also after a reload's "connecting" between (failed, connecting, running)
          announce(`camera ${this.id} running again`);
          this.toldDown = false;
        }
      }
      // The kind says where frames come from; a camera named after its kind ("demo", the
      // demo conveyor) would read "demo DEMO", so the name alone says it there.
      const kind = status.source_kind || "";
      this.kind.textContent = kind.toLowerCase() === this.id.toLowerCase() ? "" : kind;
      // Figures that are not current show a dash, not a number: with the server lost (offline)
      // or its process silent (unknown) the rates are not known (a "0.0/5" read as measured),
      // and a camera not running has no latency (its last, "217 ms", stayed beside fps 0.0).
      const measured = vouched() && status.state !== "offline" && status.state !== "unknown";
      const fpsText = !measured ? "–" : status.fps_cap > 0
        ? `${fmt(status.fps_out, 1)}/${fmt(status.fps_cap, 0)}` : fmt(status.fps_out, 1);
      this.setText(this.v.fps, fpsText);
      // Only a capped camera: one without a cap is analysed as fast as the server can, the
      // newest frame each time, which is no trouble of its own.
      const allowed = status.fps_cap > 0 ? Math.min(status.fps_cap, status.fps_in) : 0;
      const slow = measured && status.state === "running" && allowed > 0 &&
        status.fps_out < BEHIND_SHARE * allowed;
      const at = dashNow();
      this.slowSince = slow ? (this.slowSince ?? at) : null;
      const behind = slow && at - this.slowSince >= BEHIND_S;
      this.v.fps.classList.toggle("behind", behind);
      this.v.fps.title = !measured ? "not known while the server is not answering"
        : `in ${fmt(status.fps_in, 1)} fps from the source, ${fmt(status.fps_out, 1)} fps ` +
          "analysed" + (behind ? `: behind, under half the ${fmt(allowed, 1)} its cap and ` +
          "source allow, for over 10 s; the server is short of CPU (too many cameras, or " +
          "too high a rate: docs/server.md, \"Sizing a camera server\")" : "");
      const latency = measured && status.state === "running" && status.latency_ms > 0;
      this.setText(this.v.latency, latency ? `${fmt(status.latency_ms, 0)} ms` : "–");
      this.setText(this.v.dropped, String(status.frames_dropped));
      this.v.dropped.title = `${status.frames_dropped} of ${status.frames_read} frames read ` +
        "were superseded before analysis while the server was busy" +
        (status.frames_skipped ? `; ${status.frames_skipped} more were passed over by ` +
          "design (" + (status.fps_cap > 0 ? `to keep to the camera's cap of ` +
          `${fmt(status.fps_cap, 0)} fps, or ` : "") + "older frames of a burst the camera " +
          "sent at once)" : "");
      this.setText(this.v.reconnects, String(status.reconnects));
      if (this.score === null && status.last_score) this.showScore(status.last_score);
      this.updateNotice();
      this.tellDetails();
    }

    // What the tile's tooltips say: shown over its picture while it has the keyboard's
    // focus, and its description to a screen reader.
    tellDetails() {
      const lines = [this.id, `state: ${this.stateEl.title || this.stateEl.textContent}`];
      if (this.notice.title) lines.push(this.notice.title);
      if (this.v.fps.title) lines.push(`fps: ${this.v.fps.title}`);
      if (this.v.dropped.title) lines.push(`superseded: ${this.v.dropped.title}`);
      const text = lines.join("\n");
      if (this.details.textContent !== text) this.details.textContent = text;
    }

    setText(el, value) {
      if (el.textContent !== value) el.textContent = value; // no needless layout work
    }

    showScore(score) {
      this.score = score;
      this.el.dataset.scored = "true";
      this.setText(this.v.score, scoreText(score));
      const hot = state.threshold !== null && Math.fround(score) >= state.threshold;
      this.el.classList.toggle("hot", hot);
    }

    // The DAMAGED badge sits top left, and covered damage in that corner, its ring too:
    // where the ring would be under it, it goes top right (measured, as the badge's size
    // follows the tile's type).
    placeVerdict() {
      if (this.verdict.hidden || this.ring.hidden) return;
      this.verdict.classList.remove("right");
      const v = this.verdict.getBoundingClientRect();
      const r = this.ring.getBoundingClientRect();
      const under = r.left < v.right && r.right > v.left && r.top < v.bottom && r.bottom > v.top;
      if (under) this.verdict.classList.add("right");
    }

    // Seconds without a frame before the tile says "no new frames": STALE_S, or 2.5 of the
    // camera's own intervals where it analyses slower (a frame every 10 s read "no new
    // frames" most of the time: an operator review's).
    staleAfter() {
      const fps = this.status ? this.status.fps_out : 0;
      return fps > 0 ? Math.max(STALE_S, 2.5 / fps) : STALE_S;
    }

    updateNotice() {
      const s = this.status ? this.status.state : "unknown";
      // A camera that runs but shows next to nothing (a capped lens) catches no damage: its
      // badge says "blank", amber, as a camera in trouble (a green RUNNING read "fine" from
      // across the room).
      const seen = s === "running" && this.el.classList.contains("blank") ? "blank" : s;
      // With the dashboard's link down, or silent past LINK_QUIET_TICKS (a hung dashboard:
      // green RUNNING and "4.0/4" stood for its 36 s), the last known state is history: the
      // badge goes grey rather than stay a green RUNNING that nobody can vouch for.
      const live = vouched();
      const shown = live ? seen : "unknown";
      if (this.el.dataset.state !== shown) this.el.dataset.state = shown;
      this.setText(this.stateEl, live ? seen : "no data");
      const age = this.lastFrameAt ? Math.max(0, dashNow() - this.lastFrameAt) : null;
      const stale = age === null || age > this.staleAfter();
      // before its first frame a tile shows the camera's last score, as the server lists it:
      // of a camera that is down, that is old too (a page opened then showed 0.9963 in red)
      const old = this.frames > 0
        ? stale || s !== "running" || !live
        : this.score !== null && (s !== "running" || !live);
      this.el.classList.toggle("stale", old);
      // An old score says nothing of the camera now: the large figure is a dash, the last
      // score in its tooltip (greyed alone, a reconnecting camera's 0.9963 read as damage now
      // for minutes: an operator review's)
      if (this.score !== null) {
        this.setText(this.v.score, old ? "–" : scoreText(this.score));
        const at = this.lastFrameAt ? `, at ${clockTime(this.lastFrameAt)}` : "";
        const last = old ? `last score ${scoreText(this.score)}${at}, no longer live` : "";
        if (this.v.score.title !== last) this.v.score.title = last;
      }
      // Damaged in words, not only in red (colour-blind operators, a glance from afar); only
      // while the score is live: an old score says nothing of the camera now.
      // And over a picture: before its first frame is drawn, DAMAGED stood over a black
      // "waiting for frames…" (the score comes with the camera's state, the picture after).
      const damaged =
        this.el.classList.contains("hot") && !old && this.score !== null && this.frames > 0;
      if (this.verdict.hidden === damaged) this.verdict.hidden = !damaged;
      // held from a frame of the last second, the picture may show the package gone: said
      // (a DAMAGED over a frame with no damage and no ring sent the operator looking)
      // (a narrow tile says "damaged" alone: two lines covered the picture)
      this.verdict.classList.toggle("held", !this.frameHot);
      const ringed = damaged && this.frameHot && this.peak;
      if (this.ring.hidden === ringed) this.ring.hidden = !ringed;
      this.placeVerdict();
      let title = "";
      let detail = "";
      let advice = "";
      const since = this.troubleSince(s);
      // frames refused since the last one drawn, while no new one comes
      const refused = (this.frames === 0 || stale)
        ? ((this.status && this.status.frames_invalid) || 0) - this.invalidAtFrame : 0;
      if (!socketOpen) {
        title = "dashboard offline";
        detail = "reconnecting to the dashboard…";
      } else if (!live) {
        title = "no word from the dashboard";
        detail = age !== null ? `last frame ${ago(age)} ago` : "";
      } else if (s !== "running") {
        title = s;
        // Stalled, the server's words ("no frame for 1.2 s") are its time when it stalled,
        // beside a last frame's age that goes on: the age alone says it.
        const said = (this.status && this.status.last_error) || "";
        detail = s === "stalled" && age !== null ? "" : said;
        if (age !== null) detail = `${detail ? detail + " · " : ""}last frame ${ago(age)} ago`;
        // given up: it stays so until someone acts, so say what to do (it said only why),
        // on a line of its own under the error, which alone is cut short: written before
        // the error, it pushed a long error's own advice ("give the camera's MJPEG stream
        // URL") out of the tile (an operator review's)
        if (s === "failed") advice = FAILED_ADVICE;
      } else if (refused > 1 || (this.frames === 0 && refused > 0)) {
        // running, its frames coming and none analysed (too small, damaged): it read as
        // "waiting for frames…" on a green badge for as long as it lasted
        title = "frames refused";
        detail = (this.status && this.status.last_error) || "";
        if (age !== null) detail = `${detail ? detail + " · " : ""}last frame ${ago(age)} ago`;
      } else if (this.frames === 0) {
        title = "waiting for frames…";
      } else if (stale) {
        title = "no new frames";
        detail = `last frame ${ago(age)} ago`;
      } else if (this.blankSince !== null) {
        title = "blank picture";
        detail = `since ${clockTime(this.blankSince)}: the camera shows next to nothing ` +
          "(covered, capped or in the dark?), so its score says nothing";
      }
      // whom to call, where the dashboard has a contact: the server's advice goes to the
      // tooltip ("reload the server (SIGHUP)" is no step an operator can take)
      const tip = advice;
      const call = state.contact && live && socketOpen && title && TROUBLE.includes(s) && since &&
        (s === "failed" || dashNow() - since.at >= CALL_AFTER_S);
      if (call) advice = `not working: call ${state.contact}`;
      const sinceLine = title && since ? sinceText(since.at, since.earlier) : "";
      // the state in words: a narrow tile shows the badge as a dot of its colour
      const word = shown === "unknown" ? "no data" : seen;
      const badge = since ? `${word} ${sinceText(since.at, since.earlier)}` : word;
      if (this.stateEl.title !== badge) this.stateEl.title = badge;
      const key = [title, sinceLine, detail, advice].join("\u0000");
      if (key === this.noticeKey) return this.tellDetails();
      this.noticeKey = key;
      this.notice.hidden = !title;
      // the whole of it, where the tile shows only its start
      this.notice.title = [detail, tip, advice].filter((part, i, all) =>
        part && all.indexOf(part) === i).join(" · ");
      this.tellDetails();
      this.notice.replaceChildren();
      if (title) {
        this.notice.append(document.createTextNode(title));
        if (sinceLine) {
          const when = document.createElement("span");
          when.className = "since";
          when.textContent = sinceLine;
          this.notice.append(when);
        }
        if (detail) {
          const small = document.createElement("small");
          small.className = "reason";
          small.textContent = detail;
          this.notice.append(small);
        }
        if (advice) {
          const small = document.createElement("small");
          small.className = "advice";
          small.textContent = advice;
          this.notice.append(small);
        }
      }
    }

    // Since when the tile's trouble has lasted ({at, earlier}), null when it has none or that
    // is not known: the page's link to the dashboard, the dashboard's to the server, or the
    // camera's own state as the server tells it.
    troubleSince(s) {
      if (!socketOpen) return state.heardAt ? { at: state.heardAt, earlier: false } : null;
      if (s === "offline") return serverLost();
      if (s === "running" || !this.status) return null;
      const at = downSince(this.status);
      return at ? { at, earlier: false } : null;
    }

    // Draw a decoded frame and its heatmap in the same task: the browser shows both together.
    // record() keeps what the frame says; a hidden page records its frames without drawing.
    draw(header, bitmap, heat) {
      const [left, top, right, bottom] = header.box;
      const w = right - left;
      const h = bottom - top;
      if (this.frame.width !== w || this.frame.height !== h) {
        this.frame.width = w;
        this.frame.height = h;
      }
      const aspect = `${w} / ${h}`;
      if (aspect !== this.aspect) {
        this.aspect = aspect;
        this.view.style.aspectRatio = aspect;
        fitGrid(); // a taller picture may need another number of columns
      }
      this.frameCtx.drawImage(bitmap, left, top, w, h, 0, 0, w, h);
      // The ring goes where this picture's hottest cell is (shown while the tile is damaged):
      // two cells across, so the damage inside it stays in view.
      this.peak = Array.isArray(header.peak);
      if (this.peak) {
        const [px, py] = header.peak;
        Object.assign(this.ring.style, {
          left: `${((px / w) * 100).toFixed(3)}%`,
          top: `${((py / h) * 100).toFixed(3)}%`,
          width: `${(((2 * header.stride) / w) * 100).toFixed(3)}%`,
        });
      }
      this.placeVerdict();
      if (header.heat.length === 2) {
        const [hh, hw] = header.heat;
        if (this.heat.width !== hw || this.heat.height !== hh) {
          this.heat.width = hw;
          this.heat.height = hh;
        }
        const image = this.heatCtx.createImageData(hw, hh);
        const px = image.data;
        for (let i = 0; i < heat.length; i++) px.set(LUT.subarray(heat[i] * 4, heat[i] * 4 + 4), i * 4);
        this.heatCtx.putImageData(image, 0, 0);
        // The heatmap covers the whole model input; place it so its frame part fits the view.
        const stride = header.stride;
        const place = [
          (-left / w) * 100, (-top / h) * 100, ((hw * stride) / w) * 100, ((hh * stride) / h) * 100,
        ].map((v) => v.toFixed(3) + "%");
        const key = place.join(",");
        if (key !== this.heatPlace) {
          this.heatPlace = key;
          Object.assign(this.heat.style, {
            left: place[0], top: place[1], width: place[2], height: place[3],
          });
        }
      }
      this.frames += 1;
      this.invalidAtFrame = (this.status && this.status.frames_invalid) || 0;
      this.el.dataset.frames = String(this.frames);
      state.frames += 1;
    }

    record(header) {
      this.lastN = header.n;
      this.lastFrameAt = header.received || dashNow();
      // The picture's time, as a CCTV monitor prints it: it moves on only with new frames, so
      // a live-looking tile whose clock stands still is not live.
      this.setText(this.stamp, clockTime(header.time));
      this.stamp.title = `captured ${dateTime(header.time)} (the server's clock), ${ZONE} time`;
      this.stamp.hidden = false;
      // A picture that shows next to nothing (a covered lens, a black frame) scores low, and
      // that low score would read as all clear: the tile says so, and since when.
      this.blankSince = header.blank ? header.blank_since || header.time : null;
      this.el.classList.toggle("blank", header.blank === true);
      // The large figure holds the highest of the last HOLD_S: at 4 frames a second it read
      // 0.1000, 0.9866, 0.9849, 0.9980 in a second, too fast to read, the DAMAGED badge
      // blinking with it (an operator review). The ring marks a spot only on a frame that
      // is damaged itself.
      // (a clock set back, a replayed clip: what is ahead of this frame is no longer recent)
      this.recent = this.recent.filter(([t]) => t > header.time - HOLD_S && t <= header.time);
      this.recent.push([header.time, header.score]);
      this.frameHot = state.threshold !== null && Math.fround(header.score) >= state.threshold;
      this.showScore(Math.max(...this.recent.map(([, score]) => score)));
      this.addPoint(header.time, header.score);
      this.updateNotice();
    }

    addPoint(t, score) {
      const last = this.history[this.history.length - 1];
      if (last && t <= last[0]) return;
      this.history.push([t, score]);
      const cutoff = t - state.historyS - 5;
      let drop = 0;
      while (drop < this.history.length && this.history[drop][0] < cutoff) drop++;
      if (drop > 0) this.history.splice(0, drop);
      this.sparkDirty = true;
    }

    drawSpark(now) {
      if (!this.sparkDirty && now - this.sparkAt < 5000) return;
      this.sparkDirty = false;
      this.sparkAt = now;
      const c = this.spark;
      const dpr = window.devicePixelRatio || 1;
      const cw = Math.max(1, Math.round(c.clientWidth * dpr));
      const ch = Math.max(1, Math.round(c.clientHeight * dpr));
      if (c.width !== cw || c.height !== ch) {
        c.width = cw;
        c.height = ch;
      }
      const ctx = c.getContext("2d");
      ctx.clearRect(0, 0, cw, ch);
      ctx.fillStyle = "#0d1117";
      ctx.fillRect(0, 0, cw, ch);
      const end = dashNow();
      const start = end - state.historyS;
      const x = (t) => ((t - start) / state.historyS) * cw;
      const y = (s) => ch - 2 * dpr - Math.min(1, Math.max(0, s)) * (ch - 4 * dpr);
      if (state.threshold !== null) {
        ctx.strokeStyle = "rgba(248, 81, 73, .8)";
        ctx.lineWidth = dpr;
        ctx.setLineDash([4 * dpr, 4 * dpr]);
        ctx.beginPath();
        ctx.moveTo(0, y(state.threshold));
        ctx.lineTo(cw, y(state.threshold));
        ctx.stroke();
        ctx.setLineDash([]);
      }
      const pts = this.history;
      if (pts.length > 1) {
        // An outage leaves a gap: no line is drawn across a time with no scores.
        const runs = [];
        const gap = Math.max(STALE_S, 4 * (pts[pts.length - 1][0] - pts[0][0]) / (pts.length - 1));
        pts.forEach((p, i) => {
          if (i === 0 || p[0] - pts[i - 1][0] > gap) runs.push([]);
          runs[runs.length - 1].push(p);
        });
        ctx.fillStyle = "rgba(88, 166, 255, .18)";
        ctx.strokeStyle = "#58a6ff";
        ctx.lineWidth = 1.5 * dpr;
        for (const run of runs) {
          ctx.beginPath();
          ctx.moveTo(x(run[0][0]), ch);
          for (const [t, s] of run) ctx.lineTo(x(t), y(s));
          ctx.lineTo(x(run[run.length - 1][0]), ch);
          ctx.closePath();
          ctx.fill();
          ctx.beginPath();
          run.forEach(([t, s], i) => (i ? ctx.lineTo(x(t), y(s)) : ctx.moveTo(x(t), y(s))));
          if (run.length === 1) ctx.lineTo(x(run[0][0]) + dpr, y(run[0][1]));
          ctx.stroke();
        }
        if (state.threshold !== null) {
          ctx.fillStyle = "#f85149";
          for (const [t, s] of pts) {
            if (Math.fround(s) < state.threshold) continue;
            ctx.fillRect(x(t) - dpr, y(s) - dpr, 2.5 * dpr, 2.5 * dpr);
          }
        }
      }
      const minutes = Math.round(state.historyS / 60);
      this.setText(this.sparkLabel, `score, last ${minutes} min`);
      // what the chart shows, for a screen reader (it heard the label alone)
      const shown = pts.filter(([t]) => t >= start).map(([, s]) => s);
      const over = state.threshold === null
        ? 0 : shown.filter((s) => Math.fround(s) >= state.threshold).length;
      const said = `score chart, last ${minutes} min: ` + (shown.length
        ? `highest ${scoreText(Math.max(...shown))}, ${over} over the threshold` : "no scores");
      if (this.spark.getAttribute("aria-label") !== said) this.spark.setAttribute("aria-label", said);
    }
  }

  function tileFor(id) {
    let tile = tiles.get(id);
    if (!tile) {
      tile = new Tile(id);
      tiles.set(id, tile);
      // Keep tiles in id order so they never jump around.
      const after = [...tiles.keys()].sort().find((other) => other > id);
      grid.insertBefore(tile.el, after ? tiles.get(after).el : null);
      renameTiles(); // a new id may share more of another's start than any before
    }
    return tile;
  }

  function renameTiles() {
    for (const [id, tile] of tiles) {
      const cam = tile.el.querySelector(".cam");
      const cut = nameCut(id);
      if (cam.firstChild.textContent.length !== cut) cam.replaceChildren(...nameParts(id));
    }
  }

  // The grid is one Tab stop, not one a tile: a 40-camera wall took 40 presses to cross.
  // The tile last focused (or the first) takes the Tab; arrow keys, Home and End move
  // between tiles, up and down by the grid's columns as drawn.
  let roveId = null;
  function roveTiles() {
    if (!tiles.has(roveId)) roveId = grid.querySelector(".tile")?.dataset.camera ?? null;
    for (const [id, tile] of tiles) tile.el.tabIndex = id === roveId ? 0 : -1;
  }
  grid.addEventListener("focusin", (event) => {
    const el = event.target.closest(".tile");
    if (el && el.dataset.camera !== roveId) {
      roveId = el.dataset.camera;
      roveTiles();
    }
  });
  grid.addEventListener("keydown", (event) => {
    const el = event.target;
    if (!el.classList.contains("tile") || event.altKey || event.ctrlKey || event.metaKey) return;
    const order = [...grid.querySelectorAll(".tile")];
    const at = order.indexOf(el);
    const rowEnd = order.findIndex((tile) => tile.offsetTop !== order[0].offsetTop);
    const across = rowEnd < 0 ? order.length : rowEnd; // the tiles in a row
    const to = {
      ArrowRight: at + 1, ArrowLeft: at - 1, ArrowDown: at + across, ArrowUp: at - across,
      Home: 0, End: order.length - 1,
    }[event.key];
    if (to === undefined) return;
    event.preventDefault(); // the page does not scroll under it
    const next = order[to]; // none past an edge: the focus stays
    if (next && next !== el) {
      next.focus({ preventScroll: true });
      next.scrollIntoView({ block: "nearest", behavior: motion() });
    }
  });

  function setCameras(cameras) {
    const seen = new Set();
    for (const status of cameras) {
      seen.add(status.id);
      tileFor(status.id).setStatus(status);
    }
    for (const [id, tile] of tiles) {
      if (!seen.has(id)) {
        // the keyboard's place goes to a neighbour, not to the page's top
        const focused = tile.el.contains(document.activeElement);
        const next = tile.el.nextElementSibling?.classList.contains("tile")
          ? tile.el.nextElementSibling : tile.el.previousElementSibling;
        tile.el.remove();
        tiles.delete(id);
        if (focused && next?.classList.contains("tile")) next.focus({ preventScroll: true });
      }
    }
    roveTiles();
    $("empty").hidden = tiles.size > 0;
    $("empty").textContent = serverOk
      ? "No cameras on the server. Add [[cameras]] to its config and reload it (SIGHUP): " +
        "they appear here within a second."
      : "Waiting for the server…";
    fitGrid();
    // a camera that runs but shows next to nothing (a capped lens) watches nothing: not
    // counted (it read "5/6 cameras running" beside its own "blank" in the same line)
    const running = cameras.filter((c) => troubleState(c) === "running").length;
    // With the server not answering, "0/0 cameras running" (never reached) or "0/4" (lost)
    // read as counted: say what is not known instead, in a few words (why is said beside it,
    // and in the banner: at 1280 px the longer words cut the model's name off the header).
    const never = !cameras.length && !state.serverOkAt;
    setSummary(serverOk ? `${running}/${cameras.length} cameras running`
      : never ? "cameras not known yet" : "cameras: no data", cameras);
  }

  // The cameras in trouble (not running, nor still opening for the first time), named beside
  // the count: on a wall of many tiles the failed one is often screens away, and its name
  // takes the operator to it.
  const SHOWN_DOWN = 4;
  const downRank = (state) => {
    const rank = DOWN_ORDER.indexOf(state);
    return rank < 0 ? DOWN_ORDER.length : rank;
  };
  // When a camera's trouble began: the dashboard keeps it through its states, reloads and
  // server restarts (down_since), rather than since its latest state; for a camera that
  // runs but shows next to nothing, since its first blank frame in a row.
  function downSince(camera) {
    if (camera.state === "running") return camera.blank_since || null;
    return camera.down_since || camera.state_since;
  }
  // A camera in trouble as the header names it: a running one that shows next to nothing
  // (a capped lens) is in trouble too, "blank".
  const troubleState = (camera) =>
    (camera.state === "running" && camera.last_blank ? "blank" : camera.state);
  let summaryKey = "";
  let summaryTimes = []; // [element, since]: each down camera's time in its state, ticking
  function setSummary(text, cameras) {
    // Not "offline" (the dashboard lost the server): the banner says so for them all, and
    // their state_since is the server's, from before.
    const down = cameras
      .filter((c) => !["running", "connecting", "offline"].includes(troubleState(c)))
      .sort((a, b) => downRank(a.state) - downRank(b.state)); // stable: the config's order next
    const key = JSON.stringify([text, down.map((c) => [c.id, troubleState(c), downSince(c)])]);
    if (key === summaryKey) return; // unchanged: keep the buttons under the pointer
    summaryKey = key;
    const summary = $("summary");
    // Rebuilt, its buttons would take the keyboard's place with them (to the page's top):
    // the same camera's button has it again, or, that camera no longer in trouble, the line.
    const focused = summary.contains(document.activeElement)
      ? document.activeElement.dataset.camera ?? "" : null;
    summary.replaceChildren(text);
    summaryTimes = [];
    for (const camera of down.slice(0, SHOWN_DOWN)) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "down";
      button.dataset.state = troubleState(camera);
      button.dataset.camera = camera.id;
      // The name and the state in spans of their own: a touch screen lays the button out as
      // a flex box, which dropped a bare text's leading space ("yard-gatefailed").
      const name = document.createElement("span");
      name.className = "down-name";
      name.replaceChildren(...nameParts(camera.id));
      const state = document.createElement("span");
      state.className = "down-state";
      state.textContent = troubleState(camera);
      button.replaceChildren(name, " ", state);
      const since = downSince(camera);
      button.title = `show ${camera.id}` + (since
        ? `, in trouble since ${dateTime(since)}, ${troubleState(camera)} now` : "");
      button.addEventListener("click", () => showTile(camera.id));
      summary.append(" · ", button);
      // How long, beside the button rather than in it: its name stays still under the pointer
      // (and for a screen reader) while the time ticks.
      if (since) {
        const time = document.createElement("span");
        time.className = "down-for";
        summary.append(" ", time);
        summaryTimes.push([time, since]);
      }
    }
    tickSummary();
    if (down.length > SHOWN_DOWN) summary.append(` · ${down.length - SHOWN_DOWN} more`);
    fitSummary();
    if (focused !== null) {
      const again = [...summary.querySelectorAll("button.down")]
        .find((button) => button.dataset.camera === focused);
      (again || summary).focus();
    }
  }

  function tickSummary() {
    let changed = false;
    for (const [element, since] of summaryTimes) {
      const text = lasted(dashNow() - since);
      if (element.textContent !== text) {
        element.textContent = text;
        changed = true;
      }
    }
    if (changed) fitSummary(); // a time grown by a digit can push the last name out
  }

  // The names of the cameras in trouble come before the heatmap's opacity and the model's
  // name: a header too narrow for all of them (1920 pixels at a TV's 150% zoom, 1366 with
  // two cameras down) cut the names off and kept the slider. Crowded, the model's name goes
  // and the slider narrows (it stays: a control hidden is one nobody can reach); still too
  // narrow (1024 pixels), the names take a row of their own.
  const bar = document.querySelector(".bar");
  function fitSummary() {
    bar.classList.remove("crowded", "wrapped");
    const summary = $("summary");
    const over = () => summary.scrollWidth > summary.clientWidth + 1;
    if (over()) bar.classList.add("crowded");
    if (over()) bar.classList.replace("crowded", "wrapped"); // a row of their own: room again
  }
  // the summary's own box too: the clock or the connection's word beside it appearing, or
  // growing, narrows it with no change to the bar
  const summaryObserver = new ResizeObserver(() => fitSummary());
  summaryObserver.observe(bar);
  summaryObserver.observe($("summary"));

  const motion = () =>
    (window.matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth");

  function showTile(id) {
    const tile = tiles.get(id);
    if (!tile) return;
    tile.el.scrollIntoView({ block: "center", behavior: motion() });
    // the keyboard's place goes there too: it stayed in the header, and a screen reader
    // was taken nowhere
    tile.el.focus({ preventScroll: true });
    tile.el.classList.remove("flash");
    void tile.el.offsetWidth; // restart the animation on a second click
    tile.el.classList.add("flash");
  }

  // A wall screen shows every camera as large as fits without scrolling: the number of
  // columns that gives the widest pictures, every row in view. When even that would make
  // them small (many cameras, a small window), the page scrolls instead (the CSS's layout).
  let gridKey = "";
  // Many cameras on one screen (a wall of 8 or 16): when full tiles, each with its figures
  // and score chart, would be too small to fit without scrolling, the tiles go compact (the
  // picture, the name and state, the score and fps) and all stay in view.
  const FULL_MIN_W = 360;
  // The widest figures of a usual camera (30 fps or less); a wider one (120 fps capped, a
  // million frames dropped) only makes its own tile's figures take a second row.
  const WIDEST_FIGURES = {
    score: "0.8888", fps: "29.9/30", latency: "1234 ms", dropped: "99999", reconnects: "9999",
  };
  const COMPACT_MIN_W = 200; // 4 columns of 237 px at 1280x720 (a 1080p TV at 150%): 240 scrolled
  const COMPACT_ON_PHONES_FROM = 5; // cameras: fewer scroll as full tiles on a phone
  const phone = () => window.matchMedia("(max-width: 900px)").matches; // the CSS's width
  function layout() {
    const n = tiles.size;
    const css = getComputedStyle(grid);
    const gap = parseFloat(css.columnGap) || 0;
    const pad = parseFloat(css.paddingLeft) || 0;
    const width = grid.clientWidth - 2 * pad;
    const height = grid.clientHeight - 2 * pad;
    const narrow = phone();
    // The tallest picture's height for its width, as drawn now.
    let tall = 9 / 16;
    for (const tile of tiles.values()) {
      const view = tile.view.getBoundingClientRect();
      if (view.width > 0) tall = Math.max(tall, view.height / view.width);
    }
    // A tile's height besides its picture (name, figures, score chart) depends on its width:
    // a narrow tile puts its figures on two rows. It is measured on a hidden copy of a tile
    // at each width tried, never read off the tiles as they are now: that made a loop, the
    // wider tiles' one row fitting 2 columns, whose narrower tiles' two rows then did not.
    let probe = null;
    let probeView = null;
    const extraAt = (w) => {
      if (!probe) return 180;
      probe.style.width = `${Math.floor(w)}px`;
      return probe.getBoundingClientRect().height - probeView.getBoundingClientRect().height;
    };
    if (n > 0 && !narrow) {
      probe = tiles.values().next().value.el.cloneNode(true);
      delete probe.dataset.camera;
      probe.setAttribute("aria-hidden", "true");
      Object.assign(probe.style, { position: "absolute", visibility: "hidden", left: "0", top: "0" });
      grid.append(probe);
      probeView = probe.querySelector(".view");
      // Measured with the widest figures a tile shows, not the first tile's of the moment:
      // its "–" for fps or a short latency made it a row shorter now and then, and the grid
      // flipped between full and compact tiles at every poll near the bound.
      for (const [name, widest] of Object.entries(WIDEST_FIGURES)) {
        const value = probe.querySelector(`.v-${name}`);
        if (value) value.textContent = widest;
      }
    }
    let columns = 0;
    let best = 0;
    for (let c = 1; c <= n && !narrow; c++) {
      const rows = Math.ceil(n / c);
      const w = (width - (c - 1) * gap) / c;
      const h = (height - (rows - 1) * gap) / rows;
      // The width that fits is narrower when the height limits it, and a narrower tile may
      // be taller besides its picture: settle on a width whose own extra height fits.
      let fits = w;
      for (let i = 0; i < 4; i++) {
        const next = Math.min(w, (h - extraAt(fits)) / tall);
        if (next >= fits - 0.5) break;
        fits = next;
      }
      if (fits > best) {
        best = fits;
        columns = c;
      }
    }
    if (probe) probe.remove();
    return { columns, best };
  }

  // When even compact tiles would not all fit (16 cameras on a laptop, 9 on a tablet), they
  // stay compact and the page scrolls: full tiles, in fewer columns, took five screens.
  function fitGrid() {
    const n = tiles.size;
    const narrow = phone();
    grid.classList.remove("compact");
    let { columns, best } = layout();
    let compact = false;
    if (narrow ? n >= COMPACT_ON_PHONES_FROM : best < FULL_MIN_W && n > 1) {
      grid.classList.add("compact");
      ({ columns, best } = layout());
      compact = true;
    }
    const key = best >= (compact ? COMPACT_MIN_W : FULL_MIN_W) ? `${columns}:${Math.floor(best)}` : "";
    if (key === gridKey) return;
    gridKey = key;
    grid.style.gridTemplateColumns = key ? `repeat(${columns}, minmax(0, ${Math.floor(best)}px))` : "";
    grid.style.justifyContent = key ? "center" : "";
    for (const tile of tiles.values()) tile.sparkDirty = true;
  }
  new ResizeObserver(() => fitGrid()).observe(grid);

  function setModel(model) {
    state.model = model;
    const el = $("model");
    el.replaceChildren();
    if (!model) {
      el.textContent = "model unknown";
      return;
    }
    const b = document.createElement("b");
    b.textContent = model.name;
    // The provider matters more than the hash when the header is narrow: it comes first,
    // short ("CPU", "CUDA"); the tooltip has everything.
    const provider = model.provider.replace(/ExecutionProvider$/, "");
    el.append(b, document.createTextNode(` · ${provider} · ${model.sha256}`));
    el.title = `model ${model.name} (sha256 ${model.sha256}…), provider ${model.provider} ` +
      `(requested ${model.requested}) on onnxruntime ${model.onnxruntime}, ` +
      `server ${model.server_version}, server threshold ${thresholdText(model.server_threshold)}` +
      `${thresholdFrom(model.threshold_source)}, alert threshold ${thresholdText(model.threshold)}`;
    // compared as the server compares, in float32: the message says it short (0.895284), and
    // a score of exactly the threshold's float32 value is at it, not under
    // scores are compared as the float32 they are, each side through Math.fround: history
    // points come as their shortest decimal (0.1 for float32's 0.10000000149), live ones
    // exact, and a tie read over on one and under on the other (a diff review's)
    state.threshold = Math.fround(model.threshold);
    buildLut(model.threshold);
    // As the CLI prints it (0.8215, not 0.82: a tile reading 0.82 could stay quiet under a
    // threshold shown as 0.82).
    $("threshold").textContent = `score ≥ ${thresholdText(model.threshold)}`;
    for (const tile of tiles.values()) tile.sparkDirty = true;
  }

  // Text with `commands` in it (the advice the CLI prints), the commands shown as code
  // rather than between backticks; built from text nodes, never parsed as HTML.
  // Unchanged, it is left alone: the banner (role "alert") said again every second, the same
  // words, was read out again by screen readers for as long as the server was down.
  function showMarked(element, text) {
    if (element.dataset.shown === String(text)) return;
    element.dataset.shown = String(text);
    element.replaceChildren(
      ...String(text)
        .split("`")
        .map((part, i) => {
          if (i % 2 === 0) return document.createTextNode(part);
          const code = document.createElement("code");
          code.textContent = part;
          return code;
        }),
    );
  }

  function setServer(server) {
    serverKnown = serverKnown || Boolean(server);
    serverOk = Boolean(server && server.ok);
    serverRefused = Boolean(server && server.refused);
    if (serverOk) {
      state.serverOkAt = dashNow();
      state.serverDownSeen = 0;
    } else if (!state.serverDownSeen) {
      state.serverDownSeen = dashNow();
    }
    const banner = $("banner");
    if (server && !server.ok) {
      const where = server.address ? ` at ${server.address}` : "";
      const [code] = String(server.error).split(":", 1);
      // First what an operator sees happen, then what whoever runs it should check.
      showMarked(
        banner,
        server.refused
          ? `Cameras are not updating: the convstream server${where} refuses this ` +
              `dashboard (${code}). For the administrator: ${server.hint}`
          : `Cameras are not updating: no answer from the convstream server${where}.` +
              (server.hint ? ` For the administrator: ${server.hint}` : ` (${code})`),
      );
      banner.title = server.error; // gRPC's own words, for whoever digs deeper
      $("banner-bar").hidden = false;
    } else {
      $("banner-bar").hidden = true;
      showMarked(banner, ""); // said again when it shows again
    }
    showConnection();
    for (const tile of tiles.values()) tile.updateNotice();
  }

  // The corner says "live" only when both links hold: browser to dashboard, dashboard to server.
  // A link that has missed LINK_QUIET_TICKS ticks is said at once, in amber: a hung
  // dashboard read "live" for the 36 s before the page gave up on it (a message may take
  // that long to cross a slow link, so it is not called lost sooner).
  function linkQuiet() {
    const quietS = LINK_QUIET_TICKS * (state.tickS || 2);
    return socketOpen && heardHello && performance.now() - linkHeardAt > quietS * 1000;
  }
  // The tiles' figures and states are the dashboard's word: vouched for while its link holds
  // and speaks.
  const vouched = () => socketOpen && !linkQuiet();
  function showConnection() {
    const quiet = linkQuiet();
    const ok = vouched() && serverOk;
    $("conn").dataset.ok = String(ok);
    $("conn-text").textContent = !socketOpen
      ? (serverKnown ? "dashboard offline, reconnecting…" : "connecting…")
      : quiet ? "no word from the dashboard"
      : ok ? "live" : !serverKnown ? "connecting…"
      : serverRefused ? "server refuses the dashboard" : "server unreachable";
    showSince();
  }

  // Since when the banner's trouble has lasted: the dashboard's last message, or the last
  // sign of the server. Apart from the message, whose words stay still for screen readers
  // (the banner is an alert region) while the time ticks.
  // "updated 14:02:07": the newest data's time, which stands still when data stops (a hung
  // browser on a wall screen looked live); with how long ago once that is over STALE_S.
  function showUpdated() {
    const el = $("updated");
    el.hidden = !state.heardAt;
    if (!state.heardAt) return;
    const age = dashNow() - state.heardAt;
    const late = age > STALE_S;
    // with the time zone that every time on the page is in (a kiosk left on UTC and a laptop
    // on local time showed one alert at two times, nothing saying why)
    const at = `${clockTime(state.heardAt)} ${zoneName(state.heardAt)}`;
    const text = `updated ${at}${late ? ` (${lasted(age)} ago)` : ""}`;
    if (el.textContent !== text) el.textContent = text;
    el.dataset.late = String(late);
  }

  function showSince() {
    const lost = serverLost();
    const text = !socketOpen ? (state.heardAt ? sinceText(state.heardAt, false) : "")
      : !serverOk && lost ? sinceText(lost.at, lost.earlier) : "";
    const element = $("banner-since");
    if (element.textContent !== text) element.textContent = text;
    element.hidden = !text;
  }

  // ---- alerts ------------------------------------------------------------------------------
  // An alert's entry follows its episode: a better frame of the same package comes as the
  // same alert id with a new snapshot url, and the entry changes in place.
  const alertEntries = new Map(); // alert id -> its entry's parts
  const TITLE = document.title;
  let unseenAlerts = 0; // new alerts while the page was hidden
  let loadingAlerts = false; // the hello's list: alerts from before, not new ones
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      unseenAlerts = 0;
      document.title = TITLE;
    }
  });
  let shownAlert = null; // the alert in the modal
  let showClean = false; // the modal shows the frame without the heatmap

  // Alerts an operator marked handled: the dashboard keeps the marks (with its alerts, on
  // disk with --alerts-dir) and tells every page, so a wall screen, a second desk and the
  // next shift see one list (each browser kept its own, and their counts disagreed).
  const isHandled = (alert) => Boolean(alert.handled);
  // Asked of the dashboard, which answers every page with a "handled" message; false when
  // the link is down (the box goes back: a mark nobody else would see).
  // Each mark names the dashboard run its alert ids are of (its hello's "started"): one
  // started again without --alerts-dir numbers its alerts from 1 again, and it passes over
  // a mark of an alert of the run before.
  function send(message) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify({ ...message, started: state.started }));
    return true;
  }
  function setHandled(alert, on) {
    if (!send({ handled: [alert.id], on })) {
      $("modal-handled").checked = isHandled(alert);
    }
  }
  function onHandled(msg) {
    for (const mark of msg.alerts) {
      const entry = alertEntries.get(mark.id);
      if (!entry) continue;
      entry.alert = { ...entry.alert, handled: mark.handled };
      entry.li.dataset.handled = String(isHandled(entry.alert));
      labelAlert(entry);
      if (shownAlert && shownAlert.id === mark.id) {
        shownAlert = entry.alert;
        $("modal-handled").checked = isHandled(entry.alert);
        captionAlert(entry.alert);
      }
    }
    state.openAlerts = msg.open;
    countAlerts();
  }
  // The count is the dashboard's: alerts nobody has marked handled, in any browser, those
  // older than the list too; the tooltip says how many are listed.
  function countAlerts() {
    const open = state.openAlerts;
    for (const count of [$("alert-count"), $("alert-jump-count")]) {
      count.textContent = String(open);
      count.dataset.zero = String(open === 0);
    }
    let listedOpen = 0;
    for (const entry of alertEntries.values()) if (!isHandled(entry.alert)) listedOpen += 1;
    const older = open - listedOpen;
    $("alert-count").title = `${alertEntries.size} alerts listed (the newest ${MAX_ALERTS} at ` +
      `most), ${open} not marked handled` + (older > 0 ? `, ${older} of them older than the list` : "");
    // starting with its visible words ("alerts 3"), by which voice control calls it
    $("alert-jump").setAttribute("aria-label", `alerts ${open}: not handled, show them`);
    $("all-handled").hidden = open === 0;
  }
  // Marks this browser kept itself, before the dashboard kept them (by id and when raised,
  // and "mark all" until when): handed to the dashboard with the first list, then dropped.
  function handOverOldMarks(alerts) {
    const old = localStorage.getItem("convstream.handled");
    const upTo = Number(localStorage.getItem("convstream.handledUpTo")) || 0;
    if (old === null && !upTo) return;
    let marked;
    try {
      marked = new Set(JSON.parse(old || "[]"));
    } catch {
      marked = new Set();
    }
    const ids = alerts.filter((a) => !isHandled(a) &&
      (marked.has(`${a.id}@${a.raised}`) || a.raised <= upTo)).map((a) => a.id);
    if (ids.length && !send({ handled: ids.slice(0, 100), on: true })) return; // next time
    localStorage.removeItem("convstream.handled");
    localStorage.removeItem("convstream.handledUpTo");
  }
  $("alerts-lost-ok").addEventListener("click", () => { $("alerts-lost").hidden = true; });
  // "mark all handled" takes every alert raised until the newest listed, the ones past the
  // end of the list too
  $("all-handled").addEventListener("click", () => {
    let upTo = 0;
    for (const entry of alertEntries.values()) upTo = Math.max(upTo, entry.alert.raised);
    send({ handled: "all", up_to: upTo });
  });
  // A phone shows the alerts below every camera: the header's count takes the operator there.
  $("alert-jump").addEventListener("click", () => {
    $("alerts-panel").scrollIntoView({ block: "start", behavior: motion() });
  });

  // Alerts read out by screen readers: the first at once, those that come in the next
  // TOLD_EVERY_MS together in one line ("3 more damage alerts: ..."), and so on; one line an
  // alert, ten cameras on a busy belt queued a line every second or so.
  const TOLD_EVERY_MS = 5000;
  let untold = [];
  let toldTimer = 0;
  const alertLine = (alert) =>
    `damage alert on ${alert.camera}, score ${scoreText(alert.score)}, at ${clockTime(alert.raised)}`;
  function tellAlert(alert) {
    if (toldTimer) {
      untold.push(alert);
      return;
    }
    announce(alertLine(alert));
    toldTimer = setTimeout(tellUntold, TOLD_EVERY_MS);
  }
  function tellUntold() {
    const gathered = untold;
    untold = [];
    toldTimer = 0;
    if (!gathered.length) return;
    if (gathered.length === 1) {
      announce(alertLine(gathered[0]));
    } else {
      const cameras = [...new Set(gathered.map((alert) => alert.camera))];
      const named = cameras.length > 4
        ? `${cameras.slice(0, 4).join(", ")} and ${cameras.length - 4} other cameras`
        : cameras.join(", ");
      const best = Math.max(...gathered.map((alert) => alert.score));
      announce(`${gathered.length} more damage alerts, on ${named}, ` +
        `the highest score ${scoreText(best)}`);
    }
    toldTimer = setTimeout(tellUntold, TOLD_EVERY_MS);
  }

  function addAlert(alert, atTop) {
    const known = alertEntries.get(alert.id);
    if (known) {
      fillAlert(known, alert);
      if (shownAlert && shownAlert.id === alert.id && $("modal").open) openAlert(alert);
      return;
    }
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "alert";
    button.dataset.camera = alert.camera;
    button.dataset.id = String(alert.id);
    const img = document.createElement("img");
    img.alt = ""; // the button's label says what it is
    img.decoding = "async";
    const info = document.createElement("div");
    const cam = document.createElement("div");
    cam.className = "a-cam";
    cam.title = alert.camera;
    // A long id wraps, its start over two lines at most and its end whole on a third: it ran
    // past the card's edge, and over six lines when wrapped whole.
    if (alert.camera.length > LONG_NAME) {
      cam.classList.add("long");
      cam.replaceChildren(...nameParts(alert.camera));
    } else {
      cam.textContent = alert.camera;
    }
    const score = document.createElement("div");
    score.className = "a-score";
    const when = document.createElement("div");
    when.className = "a-time";
    // said in words, not by dimming alone (the dimmed text was too faint to read)
    const mark = document.createElement("div");
    mark.className = "a-handled";
    mark.textContent = "✓ handled";
    mark.setAttribute("aria-hidden", "true"); // the button's label says so
    info.append(cam, score, when, mark);
    button.append(img, info);
    const entry = { li, button, img, score, when, alert };
    button.addEventListener("click", () => openAlert(entry.alert));
    li.append(button);
    fillAlert(entry, alert);
    alertEntries.set(alert.id, entry);
    const list = $("alerts");
    // Under the pointer, the list stays where it is: a new alert at the top pushed every
    // card down, and a click aimed at one opened the one above it (and its "handled" box
    // marked that one). The new card is above, in the count, and scrolled to.
    const first = atTop && list.matches(":hover") ? list.firstElementChild : null;
    const was = first ? first.getBoundingClientRect().top : 0;
    if (atTop) list.prepend(li);
    else list.append(li);
    if (first) {
      // the panel scrolls beside the wall; on a narrow screen it is the page that scrolls
      const moved = first.getBoundingClientRect().top - was;
      const panel = $("alerts-panel");
      const before = panel.scrollTop;
      panel.scrollTop += moved;
      if (panel.scrollTop === before) document.scrollingElement.scrollTop += moved;
    }
    while (list.children.length > MAX_ALERTS) {
      const last = list.lastElementChild;
      const id = Number(last.querySelector("button").dataset.id);
      alertEntries.delete(id);
      last.remove();
    }
    state.alerts += 1;
    if (atTop && !loadingAlerts) {
      chime();
      tellAlert(alert); // read out by screen readers, as the tone sounds for others
    }
    if (atTop && document.hidden && !loadingAlerts) {
      unseenAlerts += 1; // an operator on another tab sees it in the tab's title
      document.title = `(${unseenAlerts}) damage alert · ${TITLE}`;
    }
    countAlerts();
    $("no-alerts").hidden = true;
  }

  function fillAlert(entry, alert) {
    entry.alert = alert;
    entry.li.dataset.handled = String(isHandled(alert));
    // relative, made by the dashboard: alerts/<number>-thumb.jpg?v=<n>, the overlay's part
    // around the hottest place (the whole frame, at 128 pixels wide, showed no damage)
    entry.img.src = alert.thumb_url;
    entry.score.textContent = scoreText(alert.score);
    entry.score.title = `the highest score of this episode (threshold ${thresholdText(alert.threshold)})`;
    // The list is newest first by when each alert was raised, and shows that time: the best
    // frame's time (which moves while the episode lasts, and comes before the raising of an
    // alert held by the cooldown) is in the tooltip and the enlarged view.
    const more = alert.episodes > 1 ? ` · ${alert.episodes}×` : "";
    entry.when.textContent = rowTime(alert.raised) + more;
    entry.when.dataset.raised = String(alert.raised);
    entry.when.title = `raised ${dateTime(alert.raised)} · best frame ${clockTime(alert.time)}` +
      (more ? ` · ${alert.episodes} crossings inside the alert cooldown, shown as one` : "") +
      ` · ${ZONE} time`;
    labelAlert(entry);
  }

  function labelAlert(entry) {
    const alert = entry.alert;
    const handledNow = isHandled(alert);
    const crossings = alert.episodes > 1 ? `, ${alert.episodes} crossings` : ""; // its "2×"
    entry.button.setAttribute("aria-label", `damage alert, ${alert.camera}, score ` +
      `${scoreText(alert.score)}, raised ${rowTime(alert.raised)}${crossings}` +
      (handledNow ? ", handled" : ""));
  }

  function openAlert(alert) {
    shownAlert = alert;
    showModalImage();
    $("modal-clean").checked = showClean;
    $("modal-handled").checked = isHandled(alert);
    captionAlert(alert);
    if (!$("modal").open) $("modal").showModal();
  }
  function captionAlert(alert) {
    const more = alert.episodes > 1 ? ` · ${alert.episodes} crossings in the cooldown` : "";
    const best = clockTime(alert.time) === clockTime(alert.raised)
      ? "" : ` · best frame ${clockTime(alert.time)}`;
    const done = isHandled(alert) ? ` · marked handled ${clockTime(alert.handled)}` : "";
    // the zone beside the first time it is of ("frame 121 · UTC time" read as the frame's
    // zone; after the second, as that one's alone)
    $("modal-caption").textContent = `${alert.camera} · score ${scoreText(alert.score)} ` +
      `(threshold ${thresholdText(alert.threshold)}) · raised ${dateTime(alert.raised)} ` +
      `${ZONE}${best}${more}${done} · the camera's frame ${alert.frame_id}`;
  }
  $("modal-handled").addEventListener("change", (ev) => {
    if (shownAlert) setHandled(shownAlert, ev.target.checked);
  });
  function showModalImage() {
    const img = $("modal-img");
    img.src = showClean ? shownAlert.frame_url : shownAlert.url;
    img.alt = `${shownAlert.camera}'s frame` + (showClean ? "" : ", the damage heatmap over it");
  }
  $("modal-clean").addEventListener("change", (ev) => {
    showClean = ev.target.checked;
    if (shownAlert) showModalImage();
  });
  // Outside the dialog (its backdrop) closes it; the picture does not, a tap on a tablet
  // to look closer closed it.
  $("modal").addEventListener("click", (ev) => {
    if (ev.target === $("modal")) $("modal").close();
  });
  // Closed, the dialog gives the focus back to the alert's button; one made again meanwhile
  // (the page connected again) is another element, and the focus went to the page's top.
  $("modal").addEventListener("close", () => {
    const entry = shownAlert && alertEntries.get(shownAlert.id);
    if (entry && !entry.button.contains(document.activeElement)) entry.button.focus();
  });

  // ---- a tone for each new alert, when asked for (remembered per browser) ----------------
  // Browsers let a page make sound only after someone has used it: the tone starts working
  // at the first click or key press after the page is opened.
  // Ticked and remembered, after a reload it stayed ticked and played nothing until someone
  // clicked: a kiosk wall with no keyboard never sounded. The switch now says so while the
  // browser holds the sound back (a kiosk browser can be told to allow it).
  const sound = $("sound-toggle");
  sound.checked = localStorage.getItem("convstream.sound") === "on";
  const soundLabel = sound.closest("label");
  const soundWords = soundLabel.lastChild;
  const soundTitle = soundLabel.title;
  let audio = null;
  function showSound() {
    const held = sound.checked && (!audio || audio.state !== "running");
    soundLabel.classList.toggle("held", held);
    soundWords.textContent = held ? " sound: click to allow" : " sound";
    soundLabel.title = held
      ? "this browser plays sound only after a click or a key press on the page; a kiosk's " +
        "browser can allow it from the start (Chromium: --autoplay-policy=" +
        "no-user-gesture-required)"
      : soundTitle;
  }
  function wakeAudio() {
    if (sound.checked) {
      audio = audio || new AudioContext();
      audio.onstatechange = showSound;
      if (audio.state === "suspended") audio.resume().catch(() => {});
    }
    showSound();
  }
  sound.addEventListener("change", () => {
    localStorage.setItem("convstream.sound", sound.checked ? "on" : "off");
    wakeAudio();
  });
  // "click to allow" is the switch's own label: that click allows, it does not untick. Held
  // is read as the press begins: the page's own press handler may let the sound out before
  // the click comes.
  let heldAtPress = false;
  for (const type of ["pointerdown", "keydown"]) {
    soundLabel.addEventListener(type, () => {
      heldAtPress = soundLabel.classList.contains("held");
    });
  }
  sound.addEventListener("click", (ev) => {
    if (heldAtPress || soundLabel.classList.contains("held")) {
      ev.preventDefault();
      wakeAudio();
    }
    heldAtPress = false;
  });
  document.addEventListener("pointerdown", wakeAudio);
  document.addEventListener("keydown", wakeAudio);
  // what the browser lets the tone do, for tests: none, suspended, running
  window.convstreamDashboard.audio = () => (audio ? audio.state : "none");
  // A focused tile shows its details while the keyboard is in use: on a wall the focus
  // stays where someone left it, and the details hid the picture for good.
  let keysIdle = 0;
  document.addEventListener("keydown", () => {
    document.body.classList.add("keys");
    clearTimeout(keysIdle);
    keysIdle = setTimeout(() => document.body.classList.remove("keys"), KEYS_SHOWN_MS);
  });
  wakeAudio(); // at load: where the browser allows it, the tone works without a click
  function chime() {
    if (!sound.checked || !audio || audio.state !== "running") return;
    const tone = audio.createOscillator();
    const gain = audio.createGain();
    tone.frequency.value = 880;
    gain.gain.setValueAtTime(0.2, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.6);
    tone.connect(gain).connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.6);
    state.chimes += 1;
  }

  // ---- heatmap controls, remembered per browser ------------------------------------------
  const toggle = $("heat-toggle");
  const opacity = $("heat-opacity");
  toggle.checked = localStorage.getItem("convstream.heat") !== "off";
  opacity.value = localStorage.getItem("convstream.opacity") || "70";
  const sheet = new CSSStyleSheet();
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  function applyHeat() {
    document.body.classList.toggle("heat-off", !toggle.checked);
    sheet.replaceSync(`.view canvas.heat { opacity: ${Number(opacity.value) / 100}; }`);
    localStorage.setItem("convstream.heat", toggle.checked ? "on" : "off");
    localStorage.setItem("convstream.opacity", opacity.value);
  }
  toggle.addEventListener("change", applyHeat);
  opacity.addEventListener("input", applyHeat);
  applyHeat();

  // ---- what the page shows, for keyboard, touch and new eyes (tooltips need a mouse) -----
  $("help-open").addEventListener("click", () => $("help").showModal());
  document.addEventListener("keydown", (ev) => {  // "?" as the button says, from anywhere
    const typing = ev.target.closest?.("input, textarea, select, dialog[open]");
    if (ev.key === "?" && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      ev.preventDefault();
      $("help").showModal();
    }
  });
  $("help").addEventListener("click", (ev) => {
    if (ev.target === $("help")) $("help").close(); // a click on the backdrop
  });

  // ---- the WebSocket ---------------------------------------------------------------------
  let retry = 500;
  const decoder = new TextDecoder();

  function connect() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(url);
    heardHello = false;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      socketOpen = true;
      linkHeardAt = performance.now();
      retry = 500;
      showConnection();
    };
    socket.onclose = lost;
    socket.onmessage = (ev) => {
      linkHeardAt = performance.now();
      if (typeof ev.data === "string") {
        const msg = JSON.parse(ev.data);
        if (msg.type === "tick") return; // the link's heartbeat: no news
        onText(msg);
      } else onFrame(ev.data);
      state.heardAt = dashNow();
      showUpdated();
    };
  }

  // The link is lost: closed, or silent for longer than the dashboard ever is (a dashboard
  // stopped or hung, its TCP connection still open: the page said "live", every badge a
  // green RUNNING, for as long as it lasted). Say so, and connect again.
  function lost() {
    socketOpen = false;
    if (state.heardAt) {
      // What the banner said of the server is no longer known; that the page has no data is.
      showMarked($("banner"), "Cameras are not updating: this page lost the dashboard, and " +
        "reconnects by itself. For the administrator: is `convstream dashboard` running, " +
        "and reachable from this browser?");
      $("banner").title = "";
      $("banner-bar").hidden = false;
    }
    showConnection();
    setSummary("cameras: no data", []);
    for (const tile of tiles.values()) {
      tile.setText(tile.v.fps, "–"); // rates the page can no longer vouch for
      tile.setText(tile.v.latency, "–");
      tile.updateNotice();
    }
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 5000);
    // A dashboard with an access token refuses a browser whose session it no longer knows
    // (it was given a new token): back to its login form rather than retrying for ever.
    if (state.login) {
      fetch("api/state", {method: "HEAD", cache: "no-store"}).then((response) => {
        // "changed": the form says why (a kiosk stood at "needs its access token", no reason):
        // a new token, or a logout in another tab
        if (response.status === 401) location.assign("login?changed");
      }, () => {});
    }
  }
  // Silent for longer than a live link ever is (its hello says how long: ticks every few
  // seconds, or one message slow to cross), and it is lost. Before the hello, whose length
  // grows with the site (every camera's score history: seconds on a slow link), the
  // dashboard's own bound on one message, and the ticks after it.
  let wasQuiet = false;
  setInterval(() => {
    if (!socketOpen || !socket) return;
    if (linkQuiet() !== wasQuiet) {
      wasQuiet = !wasQuiet;
      showConnection();
      // the tiles' states and rates say so too, and the header's count (the next message
      // of cameras, once it speaks again, says them afresh)
      if (wasQuiet) setSummary("cameras: no data", []);
      for (const tile of tiles.values()) {
        if (tile.status) tile.setStatus(tile.status);
        tile.updateNotice();
      }
    }
    const silent = heardHello ? state.silentS : DEFAULT_SILENT_S;
    if (performance.now() - linkHeardAt <= silent * 1000) return;
    const gone = socket;
    gone.onclose = null;
    gone.onmessage = null;
    gone.close();
    lost();
  }, 1000);

  function onText(msg) {
    switch (msg.type) {
      case "hello":
        // A new connection, perhaps to a dashboard started again, whose frame numbers start
        // again from 1: a page that had drawn frame 600 dropped every frame for minutes.
        for (const tile of tiles.values()) tile.lastN = 0;
        state.clock = { dash: msg.time, at: performance.now() };
        state.historyS = msg.history_s;
        state.silentS = msg.silent_s || DEFAULT_SILENT_S;
        state.tickS = msg.tick_s || 2;
        heardHello = true;
        if (msg.login && !state.login) {
          // the dashboard renews a session in use once a day: ask it every hour, so that a
          // wall display left open for weeks stays logged in
          setInterval(() => fetch("api/state", {method: "HEAD", cache: "no-store"})
            .catch(() => {}), 3600 * 1000);
        }
        state.login = Boolean(msg.login);
        state.contact = msg.contact || "";
        $("logout").hidden = !state.login;
        setModel(msg.model);
        setServer(msg.server);
        setCameras(msg.cameras);
        for (const [id, points] of Object.entries(msg.history)) {
          const tile = tiles.get(id);
          if (tile) {
            tile.history = points;
            tile.sparkDirty = true;
          }
        }
        // the keyboard's place, on an alert, stays on it as the list is made again (it went
        // to the page's top, and a dialog open then had no button to go back to)
        const focusedAlert = $("alerts").contains(document.activeElement)
          ? Number(document.activeElement.dataset.id) : null;
        // A dashboard started again without --alerts-dir lists none of the alerts before: the
        // page emptied its list without a word (110 unhandled alerts gone, an operator review)
        const listed = alertEntries.size;
        if (state.started && msg.started !== state.started && !msg.alerts_kept && listed) {
          $("alerts-lost-text").textContent =
            `The dashboard restarted at ${clockTime(msg.started)} and keeps no alerts across ` +
            `a restart: the ${listed} listed here before are gone (its --alerts-dir keeps them).`;
          $("alerts-lost").hidden = false;
        }
        // the enlarged alert is of the run before: its id may now be another alert's
        if (state.started && msg.started !== state.started && $("modal").open) $("modal").close();
        state.started = msg.started;
        // a dashboard upgraded meanwhile: this page's script is the old one
        if (state.assets && msg.assets && msg.assets !== state.assets) location.reload();
        state.assets = msg.assets || "";
        $("alerts").replaceChildren();
        alertEntries.clear();
        state.openAlerts = msg.open_alerts ?? 0;
        state.alerts = 0;
        countAlerts();
        $("no-alerts").hidden = false;
        loadingAlerts = true;
        for (const alert of [...msg.alerts].reverse()) addAlert(alert, true);
        loadingAlerts = false;
        handOverOldMarks(msg.alerts);
        if (focusedAlert !== null) (alertEntries.get(focusedAlert)?.button ?? $("alerts")).focus();
        break;
      case "cameras":
        state.clock = { dash: msg.time, at: performance.now() };
        setServer(msg.server);
        setCameras(msg.cameras);
        break;
      case "model":
        setModel(msg.model);
        break;
      case "alert":
        if (msg.open !== undefined) state.openAlerts = msg.open;
        addAlert(msg.alert, true);
        break;
      case "handled":
        onHandled(msg);
        break;
      default:
        break;
    }
  }

  function onFrame(buffer) {
    const view = new DataView(buffer);
    const n = view.getUint32(0, true);
    const header = JSON.parse(decoder.decode(new Uint8Array(buffer, 4, n)));
    const cells = header.heat.length === 2 ? header.heat[0] * header.heat[1] : 0;
    const heat = new Uint8Array(buffer, 4 + n, cells);
    const jpeg = new Blob([new Uint8Array(buffer, 4 + n + cells)], { type: "image/jpeg" });
    const ack = () => {
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ ack: header.camera }));
    };
    // A tab nobody looks at decodes and draws no picture (about 7% of a core a page): its
    // scores, chart, alerts and title go on, and the newest picture is drawn once it shows.
    if (document.hidden) {
      const tile = tiles.get(header.camera) || tileFor(header.camera);
      if (header.n > tile.lastN) {
        tile.record(header);
        tile.pending = { header, heat, jpeg };
      }
      ack();
      return;
    }
    // Decode off the main thread, then draw in one go: the old picture stays until then.
    createImageBitmap(jpeg).then((bitmap) => {
      const tile = tiles.get(header.camera) || tileFor(header.camera);
      if (header.n > tile.lastN) { // newer (a new connection starts lastN again)
        tile.pending = null;
        tile.draw(header, bitmap, heat);
        tile.record(header);
      }
      bitmap.close();
      ack();
    }, ack);
  }

  // Shown again: each tile's newest picture, recorded while hidden, is drawn.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    for (const tile of tiles.values()) {
      const shown = tile.pending;
      if (!shown) continue;
      tile.pending = null;
      createImageBitmap(shown.jpeg).then((bitmap) => {
        if (tile.lastN === shown.header.n) tile.draw(shown.header, bitmap, shown.heat);
        bitmap.close();
      }, () => {});
    }
  });

  // Ages, stale tiles and sparklines move on even when no message comes.
  let lastTick = 0;
  function tick(now) {
    if (now - lastTick >= SPARK_EVERY_MS) {
      lastTick = now;
      for (const tile of tiles.values()) {
        tile.updateNotice();
        tile.drawSpark(now);
      }
      tickSummary();
      showSince();
      showUpdated();
    }
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
  connect();
})();
