// pool-monitor dashboard: load htmx without blocking the page, keep opened details open across
// polls, say when the panels stopped refreshing, show demo results as plain text.
// A static file (no inline script), so a Content-Security-Policy of 'self' plus the CDN passes.
(function () {
  "use strict";
  var me = document.currentScript;

  // ---- htmx: the CDN copy (async, with SRI) or, when it has not delivered within 3 s or failed,
  // the vendored one (byte-identical). Neither blocks rendering.
  var localSrc = me && me.getAttribute("data-htmx-local");
  var WAIT_MS = 3000;
  var fallbackStarted = false;
  var domReady = false;
  var kicked = false;
  document.addEventListener("DOMContentLoaded", function () { domReady = true; });
  function startHtmx() {
    // htmx 2 starts on DOMContentLoaded, or at once when the document is complete. A copy that
    // arrives in between (async, or the fallback while the CDN still hangs) would wait for an
    // event that already happened: give it that event, once.
    if (!window.htmx || kicked || !domReady || document.readyState === "complete") return;
    kicked = true;
    document.dispatchEvent(new Event("DOMContentLoaded"));
  }
  function loadVendoredHtmx() {
    if (window.htmx || fallbackStarted || !localSrc) return;
    fallbackStarted = true;
    var script = document.createElement("script");
    script.src = localSrc;
    script.addEventListener("load", startHtmx);
    document.head.appendChild(script);
  }
  var cdn = document.getElementById("htmx-cdn");
  if (cdn) {
    cdn.addEventListener("error", loadVendoredHtmx);
    cdn.addEventListener("load", startHtmx);
  }
  // The CDN may have failed before this ran (its error event is gone): the timer covers that.
  setTimeout(loadVendoredHtmx, WAIT_MS);

  // ---- opened <details> stay open when a poll swaps their panel.
  var opened = {};
  document.addEventListener("toggle", function (event) {
    var key = event.target.getAttribute && event.target.getAttribute("data-key");
    if (!key) return;
    if (event.target.open) { opened[key] = true; } else { opened[key] = false; }
  }, true);
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    event.detail.target.querySelectorAll("details[data-key]").forEach(function (d) {
      var key = d.getAttribute("data-key");
      if (key in opened) d.open = opened[key];
    });
  });

  // ---- a hidden tab skips its polls (nobody looks); shown again, the next tick polls.
  document.addEventListener("htmx:confirm", function (event) {
    if (event.target && event.target.id === "poller" && document.visibilityState !== "visible") {
      event.preventDefault();
    }
  });

  // ---- a dashboard that silently stops refreshing looks healthy: a failed poll says so.
  var refreshedAt = new Date();
  document.addEventListener("htmx:afterRequest", function (event) {
    var pollStatus = document.getElementById("poll-status");
    if (!pollStatus || !event.detail.elt || event.detail.elt.id !== "poller") return;
    if (event.detail.successful) {
      refreshedAt = new Date();
      pollStatus.hidden = true;
      pollStatus.textContent = "";
      return;
    }
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    var why = status ? "the app answered HTTP " + status : "the app did not answer";
    if (status === 401) why += " (the dashboard token is needed again: reload the page to sign in)";
    pollStatus.textContent = "Panels last refreshed at " + refreshedAt.toLocaleTimeString() + ": " + why + ". Still trying every 2 s.";
    pollStatus.hidden = false;
  });

  // ---- demo buttons: the answer shown as text, never interpreted.
  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-demo")) return;
    var out = document.getElementById("demo-result");
    if (!out) return;
    var xhr = event.detail.xhr;
    var body = xhr && xhr.responseText ? xhr.responseText : "";
    try { body = JSON.stringify(JSON.parse(body), null, 2); } catch (ignored) { /* not JSON */ }
    var head = (xhr && xhr.status ? "HTTP " + xhr.status : "request failed") + " · " + elt.textContent.trim();
    out.textContent = head + (body ? "\n" + body : "");
    out.setAttribute("data-outcome", event.detail.successful ? "ok" : "fail");
  });
})();
