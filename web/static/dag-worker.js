// The graph's layout, off the page's thread: dagre (vendored, see vendor/README.md) places
// the boxes and routes the edges. A 5,000-step graph takes seconds; the page stays usable.
// In: {id, widths: [w...], height, edges: [[from, to]...]} (indexes, never step ids).
// Out: {id, x: [...], y: [...] (box centres), width, height, edges: [[x0, y0, x1, y1, ...]...]}.
/* global dagre */
importScripts("/static/vendor/dagre-3.1.3.min.js");

self.onmessage = function (e) {
  "use strict";
  var d = e.data, n = d.widths.length, i;
  try {
    var g = new dagre.graphlib.Graph();
    g.setGraph({rankdir: "TB", nodesep: 18, ranksep: 42, edgesep: 8, marginx: 16, marginy: 16});
    g.setDefaultEdgeLabel(function () { return {}; });
    for (i = 0; i < n; i++) { g.setNode(String(i), {width: d.widths[i], height: d.height}); }
    for (i = 0; i < d.edges.length; i++) { g.setEdge(String(d.edges[i][0]), String(d.edges[i][1])); }
    dagre.layout(g);
    var x = new Array(n), y = new Array(n), edges = new Array(d.edges.length);
    for (i = 0; i < n; i++) {
      var node = g.node(String(i));
      x[i] = Math.round(node.x * 10) / 10;
      y[i] = Math.round(node.y * 10) / 10;
    }
    for (i = 0; i < d.edges.length; i++) {
      var pts = g.edge(String(d.edges[i][0]), String(d.edges[i][1])).points, flat = [];
      for (var j = 0; j < pts.length; j++) { flat.push(Math.round(pts[j].x * 10) / 10, Math.round(pts[j].y * 10) / 10); }
      edges[i] = flat;
    }
    var size = g.graph();
    self.postMessage({id: d.id, x: x, y: y, width: Math.ceil(size.width), height: Math.ceil(size.height), edges: edges});
  } catch (err) {
    self.postMessage({id: d.id, error: String(err && err.message || err)});
  }
};
