// Live progress for the console's pages: a progressive enhancement, local and without markup.
//
// An element with data-live="URL" follows that job's Server-Sent Events (one `status` event
// per change, each a `bund job status --json` document). Progress and phase are set as text;
// when the job's state changes, the page reloads so the server renders the new facts (answers,
// reasons, result). Without this script the pages are the same, only not live.
"use strict";

(function () {
  const MAX_STREAMS = 4; // a browser opens few connections to one origin: keep some for clicks

  function follow(element) {
    const source = new EventSource(element.dataset.live);
    source.addEventListener("status", function (event) {
      const status = JSON.parse(event.data);
      if (status.state !== element.dataset.state) {
        source.close();
        window.location.reload();
        return;
      }
      const progress = element.querySelector('[data-field="progress"]');
      if (progress && status.total > 0) {
        progress.max = status.total;
        progress.value = status.done;
      }
      const phase = element.querySelector('[data-field="phase"]');
      if (phase) {
        phase.textContent = status.total > 0
          ? status.phase + " " + status.done + "/" + status.total
          : status.phase;
      }
    });
    source.addEventListener("error", function (event) {
      if (event.data) { // the console's own error event: the node did not answer
        source.close();
        element.setAttribute("title", JSON.parse(event.data).error);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const live = document.querySelectorAll("[data-live]");
    for (let i = 0; i < live.length && i < MAX_STREAMS; i++) {
      follow(live[i]);
    }
  });
})();
