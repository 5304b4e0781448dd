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
  // A model file goes up as the raw request body, streamed by the browser (no multipart).
  function upload(form, event) {
    event.preventDefault();
    var file = form.querySelector("input[type=file]").files[0];
    var status = form.querySelector(".upload-status");
    if (!file) {
      status.textContent = "Choose a file first.";
      return;
    }
    var query = new URLSearchParams({ filename: file.name });
    var name = form.querySelector("input[name=name]").value.trim();
    if (name) {
      query.set("name", name);
    }
    status.textContent = "Uploading " + file.name + " …";
    form.querySelector("button[type=submit]").disabled = true;
    fetch(form.action + "?" + query.toString(), {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/octet-stream",
        "X-CSRF-Token": form.dataset.csrfToken,
      },
      body: file,
    }).then(function (response) {
      return response.text().then(function (html) {
        var page = new DOMParser().parseFromString(html, "text/html");
        var message = page.querySelector("#models-notice, #models-error, #error-message");
        if (response.ok) {
          window.location.assign(window.location.pathname);
          return;
        }
        status.textContent = message ? message.textContent : "HTTP " + response.status;
        form.querySelector("button[type=submit]").disabled = false;
      });
    }).catch(function () {
      status.textContent = "The upload failed: is the control plane reachable?";
      form.querySelector("button[type=submit]").disabled = false;
    });
  }
  // A form with data-confirm asks first (delegated: refreshed fragments hold such forms too).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm &&
        !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-upload]").forEach(function (form) {
      form.addEventListener("submit", function (event) { upload(form, event); });
    });
    document.querySelectorAll("[data-copy-target]").forEach(function (button) {
      button.addEventListener("click", function () { copy(button); });
    });
    document.querySelectorAll("[data-refresh-url]").forEach(function (element) {
      var seconds = Math.max(1, Number(element.dataset.refreshSeconds) || 5);
      window.setInterval(function () { refresh(element); }, seconds * 1000);
    });
  });
})();
