/*
 * Demo ad-hoc driver portal: what a real portal page does with chargegate, in three steps.
 *
 * 1. Ask chargegate for the operator's reCAPTCHA settings (public, CORS open, cacheable).
 * 2. Load reCAPTCHA Enterprise from `script_url`. In production that is Google's
 *    https://www.google.com/recaptcha/enterprise.js?render=<site key>; under `chargegate dev`
 *    it is the offline emulator (same API: grecaptcha.enterprise.ready / execute).
 * 3. On "Start charging", get a fresh token and send it to YOUR backend (here POST
 *    /demo/start). The backend holds the chargegate API key, calls POST /sessions/authorize
 *    and starts the session only on "allow". Never call chargegate's authorize from the
 *    browser: the API key would be public.
 */
"use strict";

const CHARGEGATE_URL = "";          // chargegate's address ("" = the origin of this page)
const OPERATOR_ID = "demo";         // your operator id at chargegate
const EVSE_ID = "DE*CGD*E0001*1";   // in a real portal: from the charge point's QR code

const $ = (id) => document.getElementById(id);

async function loadProtection() {
  const response = await fetch(`${CHARGEGATE_URL}/operators/${OPERATOR_ID}/site-key`);
  if (!response.ok) throw new Error(`site key: HTTP ${response.status}`);
  const config = await response.json();
  if (config.enabled) {
    await loadScript(config.script_url);
    await new Promise((resolve) => grecaptcha.enterprise.ready(resolve));
  }
  return config;  // {enabled, site_key, action, script_url}
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(script);
  });
}

async function startCharging(config) {
  // Tokens are single-use and expire after two minutes: get one per attempt, at the click.
  const token = config.enabled
    ? await grecaptcha.enterprise.execute(config.site_key, {action: config.action})
    : null;
  const response = await fetch("/demo/start", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({token, evse_id: EVSE_ID}),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;  // {decision, reason, score, threshold, decision_id, mode}
}

function showDecision(answer) {
  const allowed = answer.decision === "allow";
  $("result").className = `card result ${answer.decision}`;
  $("result-title").textContent = allowed ? "✓ Charging started" : "✗ Charging refused";
  $("decision").textContent = answer.decision;
  $("reason").textContent = answer.reason;
  $("score").textContent = answer.score ?? "–";
  $("threshold").textContent = answer.threshold;
  $("decision-id").textContent = answer.decision_id;
  $("result").hidden = false;
}

function setStatus(text) {
  $("status").textContent = text;
}

// chargegate dev only: the emulator gives the next token the score chosen here.
function wireEmulatorScore() {
  const slider = $("emulator-score");
  const apply = () => {
    window.CHARGEGATE_EMULATOR_SCORE = Number(slider.value);
    $("emulator-score-value").textContent = Number(slider.value).toFixed(1);
  };
  slider.addEventListener("input", apply);
  apply();
}

async function main() {
  $("evse").textContent = EVSE_ID;
  wireEmulatorScore();
  let config;
  try {
    config = await loadProtection();
  } catch (error) {
    setStatus(`Cannot reach the charging service: ${error.message}`);
    return;
  }
  const ready = config.enabled ? "Protected by reCAPTCHA Enterprise." : "Bot protection is off.";
  setStatus(ready);
  const button = $("start");
  button.disabled = false;
  button.addEventListener("click", async () => {
    button.disabled = true;
    setStatus("Checking…");
    try {
      showDecision(await startCharging(config));
      setStatus(ready);
    } catch (error) {
      setStatus(`Could not start: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  });
}

main();
