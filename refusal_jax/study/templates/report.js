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
})();
