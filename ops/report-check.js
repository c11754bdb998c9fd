// Injected by ops/render-reports.sh into a copy of a report page, first thing in <head>: after the
// page loads, it checks in the browser that every chart was laid out and drew its data, and writes
// the verdict into <body data-check="…">, which the script reads back from the dumped DOM.
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); });
  var consoleError = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); consoleError.apply(console, arguments); };
  window.addEventListener("load", function () {
    var figures = document.querySelectorAll("figure.chart");
    var bad = [];
    figures.forEach(function (f, i) {
      var name = (f.querySelector("figcaption b") || f).textContent.slice(0, 60);
      var svg = f.querySelector("svg");
      if (!svg) { bad.push(name + ": no svg"); return; }
      var box = svg.getBoundingClientRect();
      if (box.width < 400 || box.height < 100) { bad.push(name + ": laid out " + box.width + "x" + box.height); return; }
      // Data, not the legend's samples: a line of three points or more, a point, or a coloured bar
      // taller than a legend's swatch.
      var drawn = 0;
      svg.querySelectorAll("polyline").forEach(function (p) {
        if (p.points.numberOfItems >= 3 && p.getTotalLength() > 1) drawn++;
      });
      svg.querySelectorAll("circle").forEach(function (c) { if (c.getBBox().width > 0) drawn++; });
      svg.querySelectorAll("rect").forEach(function (r) {
        var b = r.getBBox(), fill = (r.getAttribute("fill") || "").toUpperCase();
        if (fill !== "#FFFFFF" && fill !== "NONE" && fill !== "" && b.width > 0 && b.height > 12 && b.height < box.height - 40) drawn++;
      });
      var ticks = svg.querySelectorAll("text").length;
      if (drawn === 0) bad.push(name + ": no data drawn");
      if (ticks < 6) bad.push(name + ": " + ticks + " labels (axes, ticks, legend expected)");
    });
    document.body.setAttribute("data-check", JSON.stringify({ charts: figures.length, bad: bad, errors: errors }));
  });
})();
