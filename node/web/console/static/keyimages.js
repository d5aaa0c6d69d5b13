// The Study page's key images (templates/key_images.html). Without this script the window
// presets and the overlay switch are links that load the page again; with it they swap the
// images in place, the overlay switch becomes a toggle button, and zoom buttons appear.
// Everything is a real button or link, so the keyboard reaches it. No inline script: the
// page's CSP allows only scripts from the node itself.
(function () {
  "use strict";
  var LEVELS = [1, 1.5, 2, 3, 4];

  function remember(preset, overlayOn) {
    if (!window.history || !window.URL) { return; }
    var url = new URL(window.location.href);
    if (preset) { url.searchParams.set("preset", preset); }
    if (overlayOn) { url.searchParams.delete("overlay"); } else { url.searchParams.set("overlay", "off"); }
    window.history.replaceState(null, "", url.toString());
  }

  function setUp(run) {
    var bases = run.querySelectorAll("img.base");
    var overlays = run.querySelectorAll("img.overlay");
    var stacks = run.querySelectorAll(".stack");
    var presets = run.querySelectorAll("a.preset");
    var link = run.querySelector("a.overlay-link");
    var toggle = run.querySelector("button.overlay-button");
    var zoom = run.querySelector(".zoom");
    var level = run.querySelector(".zoom-level");
    var current = run.querySelector("a.preset[aria-current]");
    var state = { preset: current ? current.getAttribute("data-preset") : "", zoom: 0 };

    presets.forEach(function (a) {
      a.addEventListener("click", function (e) {
        e.preventDefault();
        state.preset = a.getAttribute("data-preset");
        bases.forEach(function (img) { img.src = img.getAttribute("data-base") + state.preset; });
        presets.forEach(function (b) { b.removeAttribute("aria-current"); });
        a.setAttribute("aria-current", "true");
        remember(state.preset, toggle.getAttribute("aria-pressed") === "true");
      });
    });

    if (link && toggle) {
      link.hidden = true;
      toggle.hidden = false;
      toggle.addEventListener("click", function () {
        var on = toggle.getAttribute("aria-pressed") !== "true";
        toggle.setAttribute("aria-pressed", on ? "true" : "false");
        overlays.forEach(function (img) { img.hidden = !on; });
        remember(state.preset, on);
      });
    }

    function show() {
      var z = LEVELS[state.zoom];
      // CSSOM, not a style attribute: the CSP (style-src 'self') allows it
      stacks.forEach(function (s) { s.style.width = (z * 100) + "%"; });
      level.textContent = Math.round(z * 100) + "\u2009%";
    }
    if (zoom) {
      zoom.hidden = false;
      zoom.addEventListener("click", function (e) {
        var button = e.target.closest("button[data-zoom]");
        if (!button) { return; }
        var what = button.getAttribute("data-zoom");
        if (what === "in") { state.zoom = Math.min(LEVELS.length - 1, state.zoom + 1); }
        else if (what === "out") { state.zoom = Math.max(0, state.zoom - 1); }
        else { state.zoom = 0; }
        show();
      });
    }
  }

  document.querySelectorAll(".keyimage-run").forEach(setUp);
}());
