// modelyard console: times in the viewer's zone (the UTC text stays without JavaScript),
// and the metric charts (uPlot, vendored) from the JSON each chart's element carries.
(function () {
  "use strict";
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.local) { return; }
      var at = new Date(el.getAttribute("datetime"));
      if (isNaN(at.getTime())) { return; }
      el.title = el.textContent;
      el.textContent = at.toLocaleString(undefined, {
        year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"});
      el.dataset.local = "1";
    });
  }
  var palette = ["#0b5cad", "#b42318", "#1a7f37", "#9a6700", "#8250df", "#57606a"];
  function charts(root) {
    if (typeof uPlot === "undefined") { return; }
    root.querySelectorAll("[data-series]").forEach(function (el) {
      if (el.dataset.drawn) { return; }
      var doc = JSON.parse(el.dataset.series);
      var labels = Object.keys(doc);
      var times = {};
      labels.forEach(function (l) { doc[l].forEach(function (p) { times[p[0]] = 1; }); });
      var xs = Object.keys(times).sort();
      var data = [xs.map(function (t) { return Date.parse(t) / 1000; })];
      var series = [{}];
      labels.forEach(function (l, i) {
        var at = {}; doc[l].forEach(function (p) { at[p[0]] = p[1]; });
        data.push(xs.map(function (t) { return t in at ? at[t] : null; }));
        series.push({label: l, stroke: palette[i % palette.length], width: 2, spanGaps: true});
      });
      var width = Math.min(el.clientWidth || 600, 760);
      var opts = {width: width, height: 220, series: series};
      if (data[0].length === 1) {  // one window: an hour either side, not a degenerate axis
        opts.scales = {x: {time: true, range: [data[0][0] - 3600, data[0][0] + 3600]}};
      }
      new uPlot(opts, data, el);
      el.dataset.drawn = "1";
    });
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localInput(at) {
    return at.getFullYear() + "-" + pad(at.getMonth() + 1) + "-" + pad(at.getDate()) + "T" +
      pad(at.getHours()) + ":" + pad(at.getMinutes()) + ":" + pad(at.getSeconds());
  }
  // "What served at a time": typed in the viewer's zone, sent as UTC (without JavaScript the
  // field is UTC, as its label says)
  function localTimeForms(root) {
    root.querySelectorAll("form[data-local-time-form]").forEach(function (form) {
      if (form.dataset.local) { return; }
      var input = form.querySelector("input[data-local-time]");
      var label = form.querySelector("[data-zone-label]");
      if (!input) { return; }
      if (input.value) {
        var shown = new Date(input.value + "Z");
        if (!isNaN(shown.getTime())) { input.value = localInput(shown); }
      }
      if (label) { label.textContent = "Time (your zone)"; }
      form.addEventListener("submit", function () {
        if (!input.value) { return; }
        var at = new Date(input.value);  // a datetime-local value: the viewer's zone
        if (isNaN(at.getTime())) { return; }
        var sent = document.createElement("input");
        sent.type = "hidden"; sent.name = "at"; sent.value = at.toISOString();
        input.removeAttribute("name");
        form.appendChild(sent);
      });
      form.dataset.local = "1";
    });
  }
  function all(root) { localTimes(root); localTimeForms(root); charts(root); }
  document.addEventListener("DOMContentLoaded", function () { all(document); });
  document.addEventListener("htmx:afterSwap", function (e) { all(e.target); });
})();
