// First run: pick a name and a server, then see the new identity's fingerprint.

import { api } from "../api.js";
import { paintFingerprint } from "../util.js";
import { showNotice } from "./toasts.js";
import { openRestore } from "./backup.js";
import { initNewDevice } from "./new-device.js";

const $ = (id) => document.getElementById(id);

function mode() {
  const checked = document.querySelector('#setup-form input[name="serverMode"]:checked');
  return checked ? checked.value : "host";
}

/** Shows the welcome view; `done(boot)` is called once the person clicks "Start messaging". */
export function showFirstRun(boot, done) {
  $("app").hidden = true;
  $("welcome").hidden = false;
  $("setup-port").textContent = String(boot.settings.hostPort);
  $("setup-url").value = boot.settings.serverMode === "connect" ? boot.settings.serverUrl : "";
  $("setup-name").focus();

  for (const r of document.querySelectorAll('#setup-form input[name="serverMode"]')) {
    r.addEventListener("change", () => {
      $("setup-url-field").hidden = mode() !== "connect";
      if (mode() === "connect") $("setup-url").focus();
    });
  }

  let result = null;
  $("setup-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = $("setup-error");
    error.hidden = true;
    const name = $("setup-name").value.trim();
    if (name.length === 0) {
      error.textContent = "Choose a name first.";
      error.hidden = false;
      $("setup-name").focus();
      return;
    }
    const button = $("setup-submit");
    button.disabled = true;
    button.textContent = "Creating your identity…";
    try {
      result = await api.completeSetup(name, mode(), mode() === "connect" ? $("setup-url").value.trim() : null);
      $("setup-done-name").textContent = result.me.clientId;
      paintFingerprint($("setup-fingerprint"), result.me.fingerprint);
      $("setup-form").hidden = true;
      $("setup-done").hidden = false;
      $("setup-start").focus();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
      button.textContent = "Create my identity";
    }
  });

  initNewDevice(boot, done);

  $("setup-restore").addEventListener("click", () => {
    openRestore((restored) => {
      $("welcome").hidden = true;
      done(restored);
    });
  });

  $("setup-start").addEventListener("click", async () => {
    // Ask again: while the person read the fingerprint, the connection came up and peers
    // appeared; `result` is from before that.
    let boot = result;
    try {
      boot = await api.bootstrap();
    } catch (err) {
      showNotice(err);
    }
    $("welcome").hidden = true;
    done(boot);
  });
}
