// Glassbox page script: ordered frames, catch-up, the server-timed thinking clock,
// keyboard use. htmx and its ws extension do the swapping; this file guards their order.
(function () {
  "use strict";
  const HEADER = /^<!--gb:([0-9a-f]+):(\d+):(snap|d)-->/;
  const lastSeq = new Map();
  const catchingUp = new Set();
  let socket = null;
  let clockOffset = 0; // server time minus browser time, from the latest frame

  function readPageSeqs(root) {
    root.querySelectorAll("article[data-msg]").forEach((a) => {
      lastSeq.set(a.dataset.msg, Number(a.dataset.seq));
    });
  }

  function requestCatchup(short) {
    if (catchingUp.has(short) || !socket) return;
    catchingUp.add(short);
    socket.send(JSON.stringify({ type: "catchup", message: short }));
  }

  // Snapshots replace elements by id; make an empty placeholder for any that this page has
  // not seen yet (a new turn, or one started from another tab or device).
  function ensurePlaceholders(html) {
    const log = document.getElementById("log");
    if (!log) return;
    const template = document.createElement("template");
    template.innerHTML = html;
    for (const el of template.content.children) {
      if (el.id && !document.getElementById(el.id)) {
        const placeholder = document.createElement("div");
        placeholder.id = el.id;
        log.appendChild(placeholder);
      }
    }
    const empty = document.getElementById("empty-state");
    if (empty) empty.remove();
  }

  document.addEventListener("htmx:wsOpen", (e) => {
    socket = e.detail.socketWrapper;
    catchingUp.clear();
    // A turn this page shows as live may have ended before the socket joined (between the
    // page render and now, or while reconnecting); the server only volunteers a snapshot for a
    // turn that is still live, so ask for each one. Snapshots are idempotent.
    document.querySelectorAll("article.assistant[data-msg]").forEach((a) => {
      if (a.querySelector("[data-stop]")) requestCatchup(a.dataset.msg);
    });
  });

  document.addEventListener("htmx:wsBeforeMessage", (e) => {
    const match = HEADER.exec(e.detail.message);
    if (!match) return;
    const short = match[1];
    const seq = Number(match[2]);
    const last = lastSeq.has(short) ? lastSeq.get(short) : -1;
    if (match[3] === "snap") {
      if (seq < last) { e.preventDefault(); return; }
      ensurePlaceholders(e.detail.message);
      lastSeq.set(short, seq);
      catchingUp.delete(short);
      return;
    }
    if (seq <= last) { e.preventDefault(); return; } // already shown
    if (seq !== last + 1) { e.preventDefault(); requestCatchup(short); return; } // a gap
    lastSeq.set(short, seq);
  });

  document.addEventListener("htmx:wsAfterMessage", () => {
    tickClocks();
    followTail();
    syncBusy();
  });

  // A tool card is replaced whole when its status changes: keep it open if the reader opened it.
  document.addEventListener("htmx:oobBeforeSwap", (e) => {
    const old = e.detail.target;
    if (!old || !old.classList || !old.classList.contains("tool-card")) return;
    if (old.querySelector(":scope > details")?.open) {
      e.detail.fragment.querySelector(".tool-card > details")?.setAttribute("open", "");
    }
  });

  document.addEventListener("htmx:oobAfterSwap", (e) => {
    const target = e.target; // the element swapped in (detail.target is the one replaced)
    if (target && target.classList && target.classList.contains("think-head")) {
      const now = Number(target.dataset.now);
      if (now) clockOffset = now - Date.now();
      // The answer started: fold the thinking away.
      if (target.dataset.ended && target.dataset.live === "1") {
        const details = target.closest("details");
        if (details) details.open = false;
      }
    }
  });

  function tickClocks() {
    // Step and tool clocks: "<prefix>N s" while they run, from server start times.
    document.querySelectorAll("[data-clock]").forEach((el) => {
      if (el.dataset.ended || !el.dataset.started) return;
      const seconds = Math.max(0, Math.floor((Date.now() + clockOffset - Number(el.dataset.started)) / 1000));
      const text = (el.dataset.livePrefix || "") + seconds + " s";
      if (el.textContent !== text) el.textContent = text;
    });
    document.querySelectorAll(".think-head[data-live='1']").forEach((el) => {
      if (el.dataset.ended || !el.dataset.started) return;
      // Rounded like the server's "Thinking… N s", so the first tick never steps back a second.
      const seconds = Math.max(0, Math.round((Date.now() + clockOffset - Number(el.dataset.started)) / 1000));
      const text = "Thinking… " + seconds + " s";
      if (el.textContent !== text) el.textContent = text;
    });
  }

  // Keep the newest text in view, unless the reader scrolled up to read.
  let stickToBottom = true;
  function followTail() {
    const log = document.getElementById("log");
    if (log && stickToBottom) log.scrollTop = log.scrollHeight;
  }

  function syncBusy() {
    const live = document.querySelector("article.assistant [data-stop]");
    document.body.classList.toggle("busy", Boolean(live));
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button.copy-code, button.copy-answer");
    if (!button) return;
    let text = "";
    if (button.classList.contains("copy-code")) {
      const code = button.closest(".code-block")?.querySelector("pre");
      text = code ? code.innerText : "";
    } else {
      const answer = document.getElementById(button.dataset.copyAnswer)?.querySelector(".answer");
      text = answer ? answer.innerText : "";
    }
    navigator.clipboard?.writeText(text).then(() => {
      const old = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = old; }, 1200);
    });
  });

  document.addEventListener("keydown", (e) => {
    const target = e.target;
    if (target && target.id === "composer-text" && e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (target.value.trim()) target.form.requestSubmit();
    } else if (e.key === "Escape") {
      const stop = document.querySelector("article.assistant [data-stop]");
      if (stop) stop.click();
    }
  });

  document.addEventListener("input", (e) => {
    if (e.target && e.target.id === "composer-text") autosize(e.target);
  });

  function autosize(textarea) {
    textarea.style.height = "auto";
    textarea.style.height = Math.min(textarea.scrollHeight, 240) + "px";
  }

  // htmx swaps no 4xx response by default, but the server answers a rejected message with the
  // composer and its error (422 invalid, 409 still answering): show it.
  document.addEventListener("htmx:beforeSwap", (e) => {
    const status = e.detail.xhr.status;
    if ((status === 409 || status === 422) && e.detail.target && e.detail.target.id === "composer") {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  document.addEventListener("htmx:afterSwap", (e) => {
    if (e.detail.target && e.detail.target.id === "composer") {
      const textarea = document.getElementById("composer-text");
      if (textarea) textarea.focus();
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    readPageSeqs(document);
    const now = Number(document.querySelector(".think-head")?.dataset.now);
    if (now) clockOffset = now - Date.now();
    const log = document.getElementById("log");
    if (log) {
      log.addEventListener("scroll", () => {
        stickToBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
      });
      log.scrollTop = log.scrollHeight;
    }
    const textarea = document.getElementById("composer-text");
    if (textarea) textarea.focus();
    syncBusy();
    setInterval(tickClocks, 250);
  });
})();
