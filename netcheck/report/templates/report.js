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
  window.addEventListener("hashchange", openHash);
  openHash();
  document.body.classList.add("js");
  apply();
}());
