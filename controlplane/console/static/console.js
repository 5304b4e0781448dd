// Outpost console: refreshes elements that carry data-refresh-url by polling it.
// Written for this project; no inline script is needed anywhere (the CSP forbids it).
"use strict";
(function () {
  function refresh(element) {
    if (document.hidden) {
      return;
    }
    fetch(element.dataset.refreshUrl, {
      credentials: "same-origin",
      headers: { "X-Outpost-Fragment": "1" },
    }).then(function (response) {
      if (response.status === 401) {
        window.location.assign("/login");
        return null;
      }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) {
        element.innerHTML = html; // server-rendered, escaped by the templates
        element.dataset.refreshedAt = String(Date.now());
      }
    }).catch(function () {
      element.dataset.refreshFailedAt = String(Date.now());
    });
  }
  function copy(button) {
    var source = document.getElementById(button.dataset.copyTarget);
    if (source === null || !navigator.clipboard) {
      return;
    }
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      button.addEventListener("click", function () { copy(button); });
    });
    document.querySelectorAll("[data-refresh-url]").forEach(function (element) {
      var seconds = Math.max(1, Number(element.dataset.refreshSeconds) || 5);
      window.setInterval(function () { refresh(element); }, seconds * 1000);
    });
  });
})();
