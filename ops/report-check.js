// Injected by ops/render-reports.sh into a copy of a report page, first thing in <head>: after the
// page loads, it checks in the browser that every chart was laid out and drew its data, and writes
// the verdict into <body data-check="…">, which the script reads back from the dumped DOM.
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); });
  var consoleError = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
  // Grid, axes, background: not data.
  var chrome = { "#FFFFFF": 1, "#E8E8E8": 1, "#AAAAAA": 1, "#000000": 1, "NONE": 1, "": 1 };
  function colour(el, attr) { return (el.getAttribute(attr) || "").toUpperCase(); }
  window.addEventListener("load", function () {
    var figures = document.querySelectorAll("figure.chart");
    var bad = [];
    figures.forEach(function (f) {
      var name = (f.querySelector("figcaption b") || f).textContent.slice(0, 60);
      var svg = f.querySelector("svg");
      if (!svg) { bad.push(name + ": no svg"); return; }
      var box = svg.getBoundingClientRect();
      if (box.width < 400 || box.height < 100) { bad.push(name + ": laid out " + box.width + "x" + box.height); return; }
      // An empty viewBox draws nothing, whatever the layout says.
      var vb = svg.hasAttribute("viewBox") && svg.viewBox.baseVal;
      if (vb && (vb.width <= 0 || vb.height <= 0)) { bad.push(name + ": an empty viewBox"); return; }
      // Legend samples: an 18 px level stroke (lines), a 12x10 swatch (bars).
      var legend = {}, data = {}, marks = [], points = 0;
      svg.querySelectorAll("polyline").forEach(function (p) {
        var c = colour(p, "stroke"), n = p.points.numberOfItems;
        if (chrome[c]) return;
        var a = n > 0 && p.points.getItem(0), b = n > 1 && p.points.getItem(n - 1);
        if (n === 2 && a.y === b.y && Math.abs(b.x - a.x) === 18) { legend[c] = 1; return; }
        if (n >= 2) { data[c] = 1; marks.push(p); }
      });
      svg.querySelectorAll("circle").forEach(function (c) { data[colour(c, "fill")] = 1; marks.push(c); points++; });
      svg.querySelectorAll("rect").forEach(function (r) {
        var c = colour(r, "fill"), bb = r.getBBox();
        if (chrome[c]) return;
        if (Math.round(bb.width) === 12 && Math.round(bb.height) === 10) { legend[c] = 1; return; }
        if (bb.height > 12) { data[c] = 1; if (bb.width > 0) marks.push(r); }
      });
      // What is drawn must be on screen, inside the chart, and not a speck.
      var left = Infinity, right = -Infinity, top = Infinity, bottom = -Infinity, shown = 0;
      marks.forEach(function (m) {
        var r = m.getBoundingClientRect();
        if (r.right < box.left || r.left > box.right || r.bottom < box.top || r.top > box.bottom) return;
        if (r.width === 0 && r.height === 0) return;
        shown++;
        left = Math.min(left, r.left); right = Math.max(right, r.right);
        top = Math.min(top, r.top); bottom = Math.max(bottom, r.bottom);
      });
      if (shown === 0) bad.push(name + ": no data drawn");
      else if (right - left < 20 && bottom - top < 20 && points === 0) bad.push(name + ": data drawn in a speck");
      Object.keys(legend).forEach(function (c) { if (!data[c]) bad.push(name + ": the legend's " + c + " has no data drawn"); });
      var labels = 0;
      svg.querySelectorAll("text").forEach(function (t) { if (t.textContent.trim()) labels++; });
      if (labels < 6) bad.push(name + ": " + labels + " labels (axes, ticks, legend expected)");
    });
    document.body.setAttribute("data-check", JSON.stringify({ charts: figures.length, bad: bad, errors: errors }));
  });
})();
