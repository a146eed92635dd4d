(function () {
  "use strict";
  // Feature filter: show the dashboards whose "L:I" contains the typed text (L5, 5:, ...).
  var box = document.getElementById("feature-filter");
  if (box) {
    box.addEventListener("input", function () {
      var q = box.value.trim().toUpperCase().replace(/^L/, "");
      document.querySelectorAll("section.dashboard").forEach(function (d) {
        var f = d.getAttribute("data-feature");
        d.classList.toggle("hidden", q !== "" && f.indexOf(q) !== 0);
      });
    });
  }
  // ?feature=L3F119 (or 3:119): show that feature's dashboard alone (for a screenshot or a link).
  var want = new URLSearchParams(window.location.search).get("feature");
  if (want) {
    var key = want.indexOf(":") >= 0 ? "L" + want.replace(":", "F") : want;
    var only = document.getElementById(key);
    if (only) {
      document.querySelectorAll("main > section, #feature-index, #features > p")
        .forEach(function (el) { el.classList.add("hidden"); });
      document.getElementById("features").classList.remove("hidden");
      document.querySelectorAll("section.dashboard").forEach(function (d) {
        d.classList.toggle("hidden", d !== only);
      });
    }
  }
})();
