// netcheck report: filters and expand/collapse. No data lives here; it reads the page.
(function () {
  "use strict";
  var tests = Array.prototype.slice.call(document.querySelectorAll("details.test"));
  var outcome = "all";
  var prop = document.getElementById("f-property");
  var topo = document.getElementById("f-topology");
  var text = document.getElementById("f-text");
  var shown = document.getElementById("shown");
  var none = document.getElementById("none-shown");

  function apply() {
    var q = text.value.trim().toLowerCase();
    var n = 0;
    tests.forEach(function (t) {
      var ok = (outcome === "all" || t.dataset.outcome === outcome) &&
        (!prop.value || t.dataset.property === prop.value) &&
        (!topo.value || t.dataset.topology === topo.value) &&
        (!q || t.textContent.toLowerCase().indexOf(q) >= 0);
      t.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = n + " of " + tests.length + " tests shown";
    none.hidden = n !== 0;
    saveFilters();
  }

  // The filters live in the URL's fragment (#filter:outcome=failed&property=dnat), so a filtered view
  // can be bookmarked or sent. The fragment, not the query: file:// pages may not change their query.
  var PREFIX = "#filter:";
  function saveFilters() {
    var p = new URLSearchParams();
    if (outcome !== "all") { p.set("outcome", outcome); }
    if (prop.value) { p.set("property", prop.value); }
    if (topo.value) { p.set("topology", topo.value); }
    if (text.value) { p.set("q", text.value); }
    var hash = p.toString() ? PREFIX + p.toString() : "";
    if (hash === location.hash || (!hash && location.hash.indexOf(PREFIX) !== 0)) { return; }
    try { history.replaceState(null, "", hash || location.pathname); } catch (e) { /* a browser that refuses: the filters still work */ }
  }
  function loadFilters() {
    if (location.hash.indexOf(PREFIX) !== 0) { return; }
    var p = new URLSearchParams(location.hash.slice(PREFIX.length));
    setOutcome(p.get("outcome") || "all");
    prop.value = p.get("property") || "";
    topo.value = p.get("topology") || "";
    text.value = p.get("q") || "";
  }

  function setOutcome(value) {
    outcome = value;
    document.querySelectorAll("button.outcome-filter").forEach(function (b) {
      b.classList.toggle("active", b.dataset.outcome === value);
    });
  }

  document.querySelectorAll("button.outcome-filter").forEach(function (b) {
    b.addEventListener("click", function () { setOutcome(b.dataset.outcome); apply(); });
  });
  [prop, topo].forEach(function (el) { el.addEventListener("change", apply); });
  text.addEventListener("input", apply);

  document.querySelectorAll("button.pick").forEach(function (b) {
    b.addEventListener("click", function () {
      prop.value = b.dataset.property;
      topo.value = b.dataset.topology;
      setOutcome("all");
      apply();
      tests.forEach(function (t) { if (!t.hidden) { t.open = true; } });
      document.getElementById("tests").scrollIntoView();
    });
  });

  function setOpen(open) {
    tests.forEach(function (t) {
      if (!t.hidden) {
        t.open = open;
        t.querySelectorAll("details").forEach(function (d) { d.open = open; });
      }
    });
  }
  document.getElementById("expand-all").addEventListener("click", function () { setOpen(true); });
  document.getElementById("collapse-all").addEventListener("click", function () { setOpen(false); });

  // A link to #t-12 opens that test.
  function openHash() {
    var el = location.hash && document.getElementById(location.hash.slice(1));
    if (el && el.tagName === "DETAILS") { el.open = true; }
  }
  window.addEventListener("hashchange", function () { loadFilters(); openHash(); apply(); });
  // Printing shows every test open; afterwards the page is as it was.
  var closed = [];
  window.addEventListener("beforeprint", function () {
    closed = Array.prototype.slice.call(document.querySelectorAll("details:not([open])"));
    closed.forEach(function (d) { d.open = true; });
  });
  window.addEventListener("afterprint", function () { closed.forEach(function (d) { d.open = false; }); closed = []; });
  loadFilters();
  openHash();
  document.body.classList.add("js");
  apply();
}());
