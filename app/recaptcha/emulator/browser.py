"""A stand-in for https://www.google.com/recaptcha/enterprise.js, for pages in development.

The page loads `<emulator>/recaptcha/enterprise.js?render=<siteKey>` instead of Google's
script; `grecaptcha.enterprise.execute(siteKey, {action})` then resolves to a token the
emulator mints for that key and action, with hostname = location.hostname. The score is
`window.CHARGEGATE_EMULATOR_SCORE`, else the script tag's `data-score`, else 0.9.
"""

from __future__ import annotations

import json

_SCRIPT = """\
/* chargegate reCAPTCHA Enterprise emulator: a development stand-in for enterprise.js. */
(function () {
  "use strict";
  var mintUrl = __MINT_URL__;
  var rendered = __RENDER__;
  var onload = __ONLOAD__;
  var script = document.currentScript;
  var queue = [];
  var loaded = false;

  function score() {
    var chosen = window.CHARGEGATE_EMULATOR_SCORE;
    if (chosen === undefined && script && script.dataset.score !== undefined) {
      chosen = script.dataset.score;
    }
    var value = chosen === undefined ? 0.9 : Number(chosen);
    return isNaN(value) ? 0.9 : value;
  }

  function ready(callback) {
    if (loaded) { setTimeout(callback, 0); } else { queue.push(callback); }
  }

  function execute(siteKey, options) {
    if (rendered && siteKey !== rendered) {
      // The message Google's script gives for a key it was not loaded with.
      return Promise.reject(new Error("Invalid site key or not loaded in api.js: " + siteKey));
    }
    var body = {
      site_key: siteKey,
      action: (options && options.action) || "",
      hostname: location.hostname,
      score: score()
    };
    return fetch(mintUrl, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) {
          throw new Error((answer.error && answer.error.message) || "token not minted");
        }
        return answer.token;
      });
    });
  }

  window.grecaptcha = window.grecaptcha || {};
  window.grecaptcha.enterprise = {ready: ready, execute: execute};
  setTimeout(function () {
    loaded = true;
    queue.splice(0).forEach(function (callback) { callback(); });
    if (onload && typeof window[onload] === "function") { window[onload](); }
  }, 0);
})();
"""


def enterprise_js(mint_url: str, render: str | None, onload: str | None) -> str:
    """The script, with its parameters embedded as JSON literals (never raw text)."""
    return (
        _SCRIPT.replace("__MINT_URL__", _js(mint_url))
        .replace("__RENDER__", _js(render))
        .replace("__ONLOAD__", _js(onload))
    )


def _js(value: str | None) -> str:
    # JSON is valid JavaScript; escaping "<" keeps "</script>" out if the text is inlined.
    return json.dumps(value).replace("<", "\\u003c")
