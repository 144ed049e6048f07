/* Progressive enhancement only: every page works without this file.
   - [data-live-src]: the element's content is fetched again every
     data-live-every seconds (paused while the keyboard focus is inside it,
     or by its [data-live-toggle] button; stopped once it holds
     [data-live-final="yes"] or the session has ended).
   - [data-select-all="NAME"]: a checkbox that ticks every NAME checkbox of its form. */
(function () {
  "use strict";

  function openDetails(box) {
    return Array.prototype.map.call(box.querySelectorAll("details"), function (d) {
      return d.open;
    });
  }

  function restoreDetails(box, states) {
    box.querySelectorAll("details").forEach(function (d, i) {
      if (states[i]) { d.open = true; }
    });
  }

  function startLive(box) {
    var src = box.getAttribute("data-live-src");
    var every = Math.max(1, parseFloat(box.getAttribute("data-live-every") || "3")) * 1000;
    var paused = false;
    var busy = false;
    var toggle = document.querySelector('[data-live-toggle="' + box.id + '"]');
    var timer = null;

    function finished() {
      var marker = box.querySelector("[data-live-final]");
      return marker !== null && marker.getAttribute("data-live-final") === "yes";
    }

    function stop(message) {
      clearInterval(timer);
      if (toggle) { toggle.hidden = true; }
      var note = document.createElement("p");
      note.className = "problem";
      note.setAttribute("role", "status");
      note.textContent = message;
      box.parentNode.insertBefore(note, box);
    }

    function tick() {
      if (paused || busy || document.hidden || box.contains(document.activeElement)) { return; }
      if (finished()) { clearInterval(timer); return; }
      busy = true;
      fetch(src, { credentials: "same-origin", redirect: "manual", headers: { Accept: "text/html" } })
        .then(function (response) {
          if (response.type === "opaqueredirect" || response.status === 401) {
            throw new Error("session");
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) {
          // Never pull a control from under the keyboard focus: wait for the next tick.
          if (box.contains(document.activeElement)) { return; }
          var states = openDetails(box);
          box.innerHTML = html;
          restoreDetails(box, states);
        })
        .catch(function (error) {
          if (error.message === "session") {
            stop("Live updates stopped: your session has ended. Reload the page to log in again.");
          }
        })
        .finally(function () { busy = false; });
    }

    if (toggle) {
      toggle.hidden = false;
      toggle.addEventListener("click", function () {
        paused = !paused;
        toggle.setAttribute("aria-pressed", paused ? "true" : "false");
        toggle.textContent = paused ? "Resume live updates" : "Pause live updates";
        if (!paused) { tick(); }
      });
    }
    timer = setInterval(tick, every);
  }

  function startSelectAll(box) {
    var form = box.form;
    var name = box.getAttribute("data-select-all");
    if (!form) { return; }
    box.hidden = false;
    box.addEventListener("change", function () {
      form.querySelectorAll('input[type="checkbox"][name="' + name + '"]').forEach(function (c) {
        c.checked = box.checked;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-src]").forEach(startLive);
    document.querySelectorAll("[data-select-all]").forEach(startSelectAll);
  });
}());
