// Treadle dashboard: the few behaviours htmx does not cover. No build step; plain ES5.
// - a followed log stays pinned to its end while new chunks arrive (unless you scrolled up)
// - the picked step is marked in the step table at once
(function () {
  "use strict";
  function atEnd(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 24; }
  function pinLog() {
    var log = document.getElementById("log-pre");
    if (log) { log.scrollTop = log.scrollHeight; }
  }
  document.addEventListener("htmx:beforeSwap", function (e) {
    var t = e.detail.target;
    if (t && t.id === "log-pre") { t.setAttribute("data-pinned", atEnd(t) ? "1" : ""); }
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    var t = e.detail.target;
    if (t && t.id === "log-pre" && t.getAttribute("data-pinned")) { pinLog(); }
  });
  document.addEventListener("htmx:load", function (e) {
    if (e.detail.elt && e.detail.elt.id === "step-detail") { pinLog(); }
  });
  document.addEventListener("DOMContentLoaded", pinLog);
  // requests htmx sends on its own carry the page's CSRF token (see web/auth.py)
  document.addEventListener("htmx:configRequest", function (e) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta && e.detail.verb !== "get") { e.detail.headers["X-CSRF-Token"] = meta.getAttribute("content"); }
  });
  // a step's log: find text (lines without it are hidden), show or hide the times
  function filterLog() {
    var pre = document.getElementById("log-pre"), box = document.getElementById("log-search");
    if (!pre || !box) { return; }
    var needle = box.value.toLowerCase(), shown = 0, spans = pre.children;
    for (var i = 0; i < spans.length; i++) {
      if (spans[i].tagName !== "SPAN") { continue; }
      var hit = !needle || spans[i].textContent.toLowerCase().indexOf(needle) >= 0;
      spans[i].hidden = !hit;
      if (hit) { shown++; }
    }
    var found = document.getElementById("log-found");
    if (found) { found.textContent = needle ? shown + " matching" : ""; }
  }
  document.addEventListener("input", function (e) { if (e.target.id === "log-search") { filterLog(); } });
  document.addEventListener("change", function (e) {
    if (e.target.id === "log-times") {
      var pre = document.getElementById("log-pre");
      if (pre) { pre.classList.toggle("no-times", !e.target.checked); }
    }
  });
  document.addEventListener("htmx:afterSwap", filterLog);  // new lines follow the search
  // forms that undo work ask first: <form data-confirm="..."> (no inline script: the CSP forbids it)
  document.addEventListener("submit", function (e) {
    var question = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); }
  }, true);
  document.addEventListener("click", function (e) {
    var a = e.target.closest ? e.target.closest(".steps-table .step-id a") : null;
    if (!a) { return; }
    var rows = document.querySelectorAll(".steps-table tr.selected");
    for (var i = 0; i < rows.length; i++) { rows[i].classList.remove("selected"); }
    a.closest("tr").classList.add("selected");
  });
})();
