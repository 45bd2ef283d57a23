// Treadle's graph view (workflow and run pages): the structure and the states come as JSON
// in data attributes (web/dag_view.py; htmx drops <script> elements it swaps in); dagre lays the graph out
// in a worker (dag-worker.js); this file draws it as SVG and adds pan, zoom, a minimap,
// "focus on failed step" and live states. No build step; plain ES5.
// Step ids are user text: they only ever reach the page through textContent and
// setAttribute, never through innerHTML.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var NODE_H = 42, MAX_LABEL = 28, CHAR_W = 7.3;
  var FAR = 0.45;            // below this zoom the labels are hidden: too small to read, and many to paint
  var MIN_K = 0.01, MAX_K = 3;
  var ARROWS_UP_TO = 600;    // edges drawn one by one (with arrowheads); above, one path for all
  // the minimap's colours are the stylesheet's (--pending, --running, ...): one palette
  var COLORS = {}, CSS_NAMES = {upstream_failed: "upstream", none: "pending"};
  ["pending", "running", "waiting", "succeeded", "failed", "skipped", "upstream_failed", "cancelled", "none"]
    .forEach(function (st) {
      var v = getComputedStyle(document.documentElement).getPropertyValue("--" + (CSS_NAMES[st] || st)).trim();
      COLORS[st] = v || "#a5adb8";
    });
  var layouts = {};          // structure key -> layout, for this page's life
  var waiting = {};          // structure key -> callbacks waiting for the worker
  var worker = null, nextId = 1, byId = {};

  function label(id) { return id.length <= MAX_LABEL ? id : id.slice(0, MAX_LABEL - 1) + "\u2026"; }
  function kindText(n) {
    var t = n.kind;
    if (n.foreach !== undefined) { t = "foreach " + (n.foreach === true ? "" : "\u00d7" + n.foreach + " ") + "\u00b7 " + t; }
    if (n.child) { t += " \u2192 " + n.child + (n.child_steps ? " (" + n.child_steps + " steps)" : ""); }
    return t;
  }
  function widthOf(n) {
    var chars = Math.max(label(n.id).length, Math.min(kindText(n).length + 9, MAX_LABEL + 6));
    return Math.round(Math.max(96, chars * CHAR_W + 24));
  }
  // the layout depends on the version and on the boxes' widths (a child workflow's step count is in a label)
  function keyOf(s) {
    var h = 0;
    for (var i = 0; i < s.nodes.length; i++) { h = (h * 31 + widthOf(s.nodes[i])) | 0; }
    return s.version + ":" + s.nodes.length + ":" + s.edges.length + ":" + (h >>> 0).toString(36);
  }

  // -- layout (worker, cached per definition version in the browser) ---------------------
  function storageGet(key) {
    try { var t = window.localStorage.getItem("treadle-dag:" + key); return t ? JSON.parse(t) : null; } catch (e) { return null; }
  }
  // the last KEEP layouts stay in the browser (a 5,000-step one is a few hundred kB)
  function storagePut(key, lay) {
    var s, keys, KEEP = 4;
    try {
      s = window.localStorage;
      keys = JSON.parse(s.getItem("treadle-dag-keys") || "[]").filter(function (k) { return k !== key; });
      keys.push(key);
      while (keys.length > KEEP) { s.removeItem("treadle-dag:" + keys.shift()); }
      s.setItem("treadle-dag-keys", JSON.stringify(keys));
      s.setItem("treadle-dag:" + key, JSON.stringify(lay));
    } catch (e) {  // full: keep this one only; disabled: the layout is only computed again
      try {
        for (var i = 0; keys && i < keys.length; i++) { s.removeItem("treadle-dag:" + keys[i]); }
        s.setItem("treadle-dag-keys", JSON.stringify([key]));
        s.setItem("treadle-dag:" + key, JSON.stringify(lay));
      } catch (e2) { /* nothing kept */ }
    }
  }
  function layoutOf(structure, done) {
    var key = keyOf(structure);
    if (layouts[key]) { done(layouts[key], "page"); return; }
    var stored = storageGet(key);
    if (stored && stored.x && stored.x.length === structure.nodes.length) { layouts[key] = stored; done(stored, "stored"); return; }
    if (waiting[key]) { waiting[key].push(done); return; }
    waiting[key] = [done];
    if (!worker) {
      worker = new Worker("/static/dag-worker.js");
      worker.onmessage = function (e) {
        var k = byId[e.data.id]; delete byId[e.data.id];
        if (!e.data.error) { layouts[k] = e.data; storagePut(k, e.data); }
        var cbs = waiting[k] || []; delete waiting[k];
        for (var i = 0; i < cbs.length; i++) { cbs[i](e.data, "worker"); }
      };
      worker.onerror = function (e) {  // the worker itself failed (its script, dagre): every wait ends
        for (var k in waiting) {
          if (Object.prototype.hasOwnProperty.call(waiting, k)) {
            for (var i = 0; i < waiting[k].length; i++) { waiting[k][i]({error: e.message || "the layout worker failed"}); }
          }
        }
        waiting = {}; byId = {}; worker = null;
      };
    }
    var id = nextId++;
    byId[id] = key;
    worker.postMessage({id: id, widths: structure.nodes.map(widthOf), height: NODE_H, edges: structure.edges});
  }

  // -- drawing ------------------------------------------------------------------------
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } }
    if (parent) { parent.appendChild(e); }
    return e;
  }

  function View(root) {
    this.root = root;
    this.canvas = root.querySelector(".dag-canvas");
    this.stage = root.querySelector(".dag-stage");
    this.status = root.querySelector(".dag-status");
    this.minimap = root.querySelector(".dag-minimap");
    this.failedButton = root.querySelector('[data-dag="failed"]');
    this.structure = JSON.parse(root.getAttribute("data-structure"));
    this.run = root.getAttribute("data-run");
    this.nodes = {};       // step id -> {g, meta, title, i}
    this.states = null;
    this.statesText = "";
    this.view = {x: 0, y: 0, k: 1};
  }

  View.prototype.start = function () {
    var self = this, n = this.structure.nodes.length;
    this.say("Laying out " + n.toLocaleString("en") + " step" + (n === 1 ? "" : "s") + "\u2026");
    layoutOf(this.structure, function (lay, source) {
      if (lay.error) { self.say("The graph could not be laid out: " + lay.error); return; }
      self.root.setAttribute("data-layout", source);  // where it came from: worker, stored, page
      self.lay = lay;
      self.draw();
      self.readStates();
      self.wire();
      self.home();
      self.root.setAttribute("data-ready", "1");
      self.say(n.toLocaleString("en") + " step" + (n === 1 ? "" : "s") +
        (self.fitK() < 1 ? ": drag or use the arrow keys to move, the wheel or + and \u2212 to zoom" : ""));
    });
  };

  View.prototype.say = function (text) { if (this.status) { this.status.textContent = text; } };

  View.prototype.draw = function () {
    var lay = this.lay, s = this.structure, self = this;
    var svg = el("svg", {"class": "dag", role: "group", "aria-label": "workflow graph, " + s.nodes.length + " steps"});
    var defs = el("defs", {}, svg);
    var marker = el("marker", {id: "dag-arrow", viewBox: "0 0 8 8", refX: "7", refY: "4", markerWidth: "7",
      markerHeight: "7", orient: "auto"}, defs);
    el("path", {d: "M0 0L8 4L0 8z", "class": "arrowhead"}, marker);
    this.port = el("g", {"class": "viewport"}, svg);
    var edges = el("g", {"class": "edges"}, this.port), i;
    var few = s.edges.length <= ARROWS_UP_TO, all = [];
    for (i = 0; i < s.edges.length; i++) {
      var p = lay.edges[i], d = "M" + p[0] + " " + p[1];
      for (var j = 2; j < p.length; j += 2) { d += "L" + p[j] + " " + p[j + 1]; }
      if (few) { el("path", {"class": "edge", d: d, "marker-end": "url(#dag-arrow)"}, edges); } else { all.push(d); }
    }
    if (!few && all.length) { el("path", {"class": "edge", d: all.join("")}, edges); }
    var layer = el("g", {"class": "nodes"}, this.port);
    for (i = 0; i < s.nodes.length; i++) {
      var n = s.nodes[i], w = widthOf(n), x = lay.x[i] - w / 2, y = lay.y[i] - NODE_H / 2;
      var g = el("g", {"class": "node", "data-step": n.id, transform: "translate(" + x + " " + y + ")"}, layer);
      var box = g;
      if (this.run) {
        box = el("a", {href: "/runs/" + encodeURIComponent(this.run) + "?step=" + encodeURIComponent(n.id) + "#step-detail"}, g);
      }
      var title = el("title", {}, box);
      if (n.foreach !== undefined || n.child) {  // one node for many: drawn as a stack
        g.setAttribute("data-group", n.child ? "workflow" : "foreach");
        el("rect", {"class": "stack", x: "4", y: "-4", width: w, height: NODE_H, rx: "6"}, box);
      }
      el("rect", {"class": "box", width: w, height: NODE_H, rx: "6"}, box);
      el("text", {"class": "id", x: w / 2, y: 17}, box).textContent = label(n.id);
      var meta = el("text", {"class": "meta", x: w / 2, y: 33}, box);
      meta.textContent = kindText(n);
      this.nodes[n.id] = {g: g, meta: meta, title: title, i: i, w: w};
      this.describe(n.id, null);
    }
    this.svg = svg;
    this.canvas.textContent = "";
    this.canvas.appendChild(svg);
    // the stage is as tall as the graph at full size, within the window
    var want = Math.min(Math.max(lay.height + 24, 200), Math.max(Math.round(window.innerHeight * 0.65), 200));
    this.stage.style.height = want + "px";
    if (this.minimap) { this.minimap.hidden = this.fitK() >= 1; }
    svg.addEventListener("click", function (e) { self.open(e); });
  };

  View.prototype.describe = function (id, entry) {
    var node = this.nodes[id], n = this.structure.nodes[node.i], meta = kindText(n), tip = n.id + " \u2014 " + kindText(n);
    if (entry) {
      if (entry.length > 2) { meta = kindText(n).replace(/^foreach (\u00d7\d+ )?/, "foreach " + entry[2] + "/" + entry[3] + " "); }
      if (entry[1]) { meta += " \u00b7 " + entry[1]; }
      tip = n.id + " \u2014 " + entry[0].replace("_", " ") + " \u2014 " + meta +
        (entry.length > 2 ? " (" + entry[2] + " of " + entry[3] + " items succeeded)" : "");
    }
    node.meta.textContent = meta.length > MAX_LABEL + 8 ? meta.slice(0, MAX_LABEL + 7) + "\u2026" : meta;
    node.title.textContent = tip;
  };

  // -- states (run pages; every live refresh replaces #run-graph) ----------------------
  View.prototype.readStates = function () {
    var holder = this.root.querySelector(".dag-states");
    if (!holder || !this.lay) { return; }
    var text = holder.getAttribute("data-states") || "";
    if (text === this.statesText) { return; }
    this.statesText = text;
    var next = JSON.parse(text), prev = this.states ? this.states.steps : {};
    for (var id in next.steps) {
      if (!Object.prototype.hasOwnProperty.call(next.steps, id) || !this.nodes[id]) { continue; }
      var e = next.steps[id], p = prev[id];
      if (p && p.join("|") === e.join("|")) { continue; }
      this.nodes[id].g.setAttribute("class", "node s-" + e[0]);
      this.describe(id, e);
    }
    this.states = next;
    if (this.failedButton) { this.failedButton.disabled = !next.failed || !this.nodes[next.failed]; }
    this.paintMinimap();
  };

  // -- pan and zoom ---------------------------------------------------------------------
  View.prototype.size = function () { return {w: this.canvas.clientWidth || 600, h: this.canvas.clientHeight || 300}; };
  View.prototype.fitK = function () {
    var c = this.size();
    return Math.min((c.w - 16) / this.lay.width, (c.h - 16) / this.lay.height, 1);
  };
  View.prototype.apply = function () {
    var v = this.view, self = this;
    if (this.frame) { return; }
    this.frame = window.requestAnimationFrame(function () {
      self.frame = null;
      self.port.setAttribute("transform", "translate(" + v.x + " " + v.y + ") scale(" + v.k + ")");
      self.canvas.classList.toggle("far", v.k < FAR);
      self.paintMinimap(true);
    });
  };
  View.prototype.zoomAt = function (px, py, factor) {
    this.touched = true;
    var v = this.view, k = Math.min(MAX_K, Math.max(MIN_K, v.k * factor));
    v.x = px - (px - v.x) * (k / v.k);
    v.y = py - (py - v.y) * (k / v.k);
    v.k = k;
    this.apply();
  };
  View.prototype.centreOn = function (x, y, k) {
    var c = this.size();
    this.touched = true;
    this.view = {k: k, x: c.w / 2 - x * k, y: c.h / 2 - y * k};
    this.apply();
  };
  View.prototype.fit = function () {
    var k = Math.max(this.fitK(), MIN_K);
    this.centreOn(this.lay.width / 2, this.lay.height / 2, k);
  };
  // the whole graph when it is readable that way; otherwise its top at a readable size
  View.prototype.home = function () {
    if (this.fitK() >= FAR) { this.fit(); this.touched = false; return; }
    var c = this.size(), k = 0.8, w = this.lay.width * k;
    var x = w <= c.w ? (c.w - w) / 2 : Math.min(0, Math.max(c.w - w, c.w / 2 - this.lay.x[0] * k));
    this.view = {k: k, x: x, y: 8};  // centred on the first step, the graph's edges kept in the canvas
    this.apply();
  };
  View.prototype.focusFailed = function () {
    var id = this.states && this.states.failed, node = id && this.nodes[id];
    if (!node) { return; }
    this.centreOn(this.lay.x[node.i], this.lay.y[node.i], Math.max(this.view.k, 1));
    var old = this.svg.querySelector('[data-focused]');
    if (old) { old.removeAttribute("data-focused"); }
    node.g.setAttribute("data-focused", "1");
    var target = node.g.querySelector("a");
    if (target && target.focus) { target.focus({preventScroll: true}); }
    this.say("Showing the failed step " + id);
  };

  View.prototype.wire = function () {
    var self = this, canvas = this.canvas, drag = null, moved = false;
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      var r = canvas.getBoundingClientRect();
      self.zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
    }, {passive: false});
    canvas.addEventListener("pointerdown", function (e) {
      if (e.button !== 0) { return; }
      drag = {x: e.clientX, y: e.clientY, vx: self.view.x, vy: self.view.y, id: e.pointerId};
      moved = false;
    });
    canvas.addEventListener("pointermove", function (e) {
      if (!drag) { return; }
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!moved && Math.abs(dx) + Math.abs(dy) < 4) { return; }
      if (!moved) { moved = true; canvas.setPointerCapture(drag.id); canvas.classList.add("dragging"); }
      self.touched = true;
      self.view.x = drag.vx + dx;
      self.view.y = drag.vy + dy;
      self.apply();
    });
    function end() { drag = null; canvas.classList.remove("dragging"); }
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("click", function (e) {  // a drag is not a click on the box it ends on
      if (moved) { e.preventDefault(); e.stopPropagation(); moved = false; }
    }, true);
    canvas.addEventListener("keydown", function (e) {
      var c = self.size(), step = 60;
      var moves = {ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step]};
      if (moves[e.key]) {
        self.touched = true;
        self.view.x += moves[e.key][0]; self.view.y += moves[e.key][1]; self.apply();
      } else if (e.key === "+" || e.key === "=") { self.zoomAt(c.w / 2, c.h / 2, 1.25); }
      else if (e.key === "-" || e.key === "_") { self.zoomAt(c.w / 2, c.h / 2, 0.8); }
      else if (e.key === "0") { self.fit(); }
      else { return; }
      e.preventDefault();
    });
    this.root.querySelector(".dag-tools").addEventListener("click", function (e) {
      var b = e.target.closest ? e.target.closest("button[data-dag]") : null, c = self.size();
      if (!b) { return; }
      var what = b.getAttribute("data-dag");
      if (what === "in") { self.zoomAt(c.w / 2, c.h / 2, 1.25); }
      else if (what === "out") { self.zoomAt(c.w / 2, c.h / 2, 0.8); }
      else if (what === "fit") { self.fit(); }
      else if (what === "failed") { self.focusFailed(); }
    });
    if (this.minimap) {
      var pick = null;
      var moveTo = function (e) {
        var r = self.minimap.getBoundingClientRect(), m = self.mm;
        self.centreOn((e.clientX - r.left - m.ox) / m.s, (e.clientY - r.top - m.oy) / m.s, self.view.k);
      };
      this.minimap.addEventListener("pointerdown", function (e) { pick = e.pointerId; self.minimap.setPointerCapture(pick); moveTo(e); });
      this.minimap.addEventListener("pointermove", function (e) { if (pick !== null) { moveTo(e); } });
      this.minimap.addEventListener("pointerup", function () { pick = null; });
    }
    // a new window size: the whole graph again, or the same point in the middle once moved by hand
    if (window.ResizeObserver) {
      var last = self.size();
      new ResizeObserver(function () {
        var c = self.size(), v = self.view;
        if (c.w === last.w && c.h === last.h) { return; }
        if (!self.touched) { self.home(); } else { v.x += (c.w - last.w) / 2; v.y += (c.h - last.h) / 2; self.apply(); }
        last = c;
      }).observe(canvas);
    }
    // live refreshes swap #run-graph (the states) inside this view
    if (window.MutationObserver && this.run) {
      new MutationObserver(function () { self.readStates(); }).observe(this.root, {childList: true});
    }
  };

  // a step opened from the graph loads into the step panel as the steps table does
  View.prototype.open = function (e) {
    var a = e.target.closest ? e.target.closest("a") : null;
    var panel = document.getElementById("step-detail");
    if (!a || !window.htmx || !panel || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) { return; }
    var id = a.parentNode.getAttribute("data-step");
    e.preventDefault();
    window.htmx.ajax("GET", "/runs/" + encodeURIComponent(this.run) + "/steps/" + encodeURIComponent(id),
      {target: "#step-detail", swap: "outerHTML"});
    window.history.pushState({}, "", a.getAttribute("href"));
  };

  // -- minimap: every box in its state's colour, and the part the canvas shows -----------
  View.prototype.paintMinimap = function (viewOnly) {
    var mm = this.minimap;
    if (!mm || mm.hidden || !this.lay) { return; }
    var ratio = window.devicePixelRatio || 1, s = Math.min(192 / this.lay.width, 112 / this.lay.height);
    var cw = Math.max(Math.round(this.lay.width * s) + 8, 40), ch = Math.max(Math.round(this.lay.height * s) + 8, 24);
    if (!this.base || !viewOnly) {
      mm.style.width = cw + "px";  // the graph's own shape, at most 200 x 120
      mm.style.height = ch + "px";
      this.mm = {s: s, ox: (cw - this.lay.width * s) / 2, oy: (ch - this.lay.height * s) / 2};
      var base = document.createElement("canvas");
      base.width = cw * ratio; base.height = ch * ratio;
      var b = base.getContext("2d");
      b.scale(ratio, ratio);
      var steps = this.states ? this.states.steps : {}, nodes = this.structure.nodes;
      for (var i = 0; i < nodes.length; i++) {
        var st = steps[nodes[i].id] ? steps[nodes[i].id][0] : "none", w = widthOf(nodes[i]);
        b.fillStyle = COLORS[st] || COLORS.none;
        b.fillRect(this.mm.ox + (this.lay.x[i] - w / 2) * s, this.mm.oy + (this.lay.y[i] - NODE_H / 2) * s,
          Math.max(w * s, 1.5), Math.max(NODE_H * s, 1.5));
      }
      this.base = base;
      mm.width = cw * ratio; mm.height = ch * ratio;
    }
    var ctx = mm.getContext("2d"), m = this.mm, v = this.view, c = this.size();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, mm.width, mm.height);
    ctx.drawImage(this.base, 0, 0);
    ctx.scale(ratio, ratio);
    ctx.strokeStyle = "#2f6fdb";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(m.ox + (-v.x / v.k) * m.s, m.oy + (-v.y / v.k) * m.s, c.w / v.k * m.s, c.h / v.k * m.s);
  };

  function init(scope) {
    var roots = (scope || document).querySelectorAll ? (scope || document).querySelectorAll(".dag-view") : [];
    for (var i = 0; i < roots.length; i++) {
      if (roots[i].__dag) { continue; }
      roots[i].__dag = new View(roots[i]);
      roots[i].__dag.start();
    }
  }
  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (e) { init(e.detail.elt.parentNode || document); });
})();
