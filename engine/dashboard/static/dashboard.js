// The run page, live: counts every second, charts and passes every 3 s; a rerun form asks to confirm
// how many rows it sends. Nothing else; no library.
(function () {
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (event) => {
      if (form.dataset.ask) {
        if (!window.confirm(form.dataset.ask)) event.preventDefault();
        return;
      }
      const boxes = [...form.querySelectorAll("input[type=checkbox]:checked")];
      const count = boxes.reduce((n, box) => n + Number(box.dataset.count), Number(form.dataset.count));
      const risk = boxes.length ? "\n\nIncluding rows that may have been charged already: resending can charge those customers twice." : "";
      if (!window.confirm(`Send ${count} rows of ${form.dataset.run} again?${risk}`)) event.preventDefault();
    });
  }
})();
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const run = live.dataset.run;
  const root = document.querySelector("main").dataset.root || "";
  const set = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  async function refresh() {
    try {
      const r = await fetch(`${root}/runs/${encodeURIComponent(run)}/live.json`, {cache: "no-store"});
      if (!r.ok) return;
      const s = await r.json();
      for (const k of ["state", "done", "succeeded", "failed", "rejected", "unknown", "key_conflict", "pending"]) set(k, s[k]);
      set("attempts", s.attempts ?? "-");
      for (const q of ["p50", "p95", "p99"]) set(q, s.latency_ms[q] ?? "-");
      set("rate", s.rows_per_s == null ? "-" : Math.round(s.rows_per_s));
      set("eta", s.eta_s ?? "-");
      document.getElementById("bar").value = s.progress;
      document.getElementById("paused").hidden = !s.paused;
      document.getElementById("paused").textContent = s.cancelled ? "cancelled" : "paused";
      document.getElementById("rerun").hidden = !s.rerun_running;
      if (s.rerun) {
        document.getElementById("rerun-status").hidden = false;
        set("rerun-rows", s.rerun.rows);
        set("rerun-outcome", s.rerun.running ? "running" : `exit code ${s.rerun.exit_code}`);
        set("rerun-output", s.rerun.output.join("\n"));
      }
    } catch (e) { /* the next tick tries again */ }
  }
  const charts = document.getElementById("charts");
  async function redraw() {
    try {
      const r = await fetch(charts.dataset.src, {cache: "no-store"});
      if (r.ok) charts.innerHTML = await r.text();
    } catch (e) { /* the next tick tries again */ }
  }
  setInterval(refresh, 1000);
  setInterval(redraw, 3000);
  redraw();
})();
