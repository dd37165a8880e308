// The home page's running states, kept current without a reload: every few seconds
// it asks /home/live.json about the builds and jobsets on the page and updates their
// statuses and counts, the queue and the number of agents and running builds in
// place. Optional: the page is complete without it.
(() => {
  'use strict';
  const root = document.querySelector('[data-live]');
  if (!root) return;
  const every = Number(root.dataset.liveMs) || 5000;
  const final = (s) => s !== 'queued' && s !== 'running';
  const cls = (s) => (s === 'succeeded' ? 'ok' : (s === 'queued' || s === 'running' || s === 'cancelled') ? s : 'bad');

  // setStatus updates the status badge inside el.
  const setStatus = (el, status) => {
    const badge = el.querySelector('.status');
    if (!badge || badge.textContent === status) return;
    badge.textContent = status;
    badge.className = 'status ' + cls(status);
  };
  const setCount = (row, field, n) => {
    const el = row.querySelector('[data-f="' + field + '"]');
    if (!el) return;
    el.textContent = String(n);
    el.classList.toggle('zero', n === 0);
  };

  const apply = (st) => {
    for (const el of root.querySelectorAll('[data-build]')) {
      const s = st.builds[el.dataset.build];
      if (s) setStatus(el, s);
    }
    for (const row of root.querySelectorAll('[data-jobset]')) {
      const j = st.jobsets[row.dataset.jobset];
      if (!j) continue;
      const link = row.querySelector('[data-f="eval"]');
      if (link) {
        link.setAttribute('href', '/eval/' + j.eval_id);
        setStatus(link, j.status);
      }
      for (const f of ['succeeded', 'failed', 'queued', 'running']) setCount(row, f, j[f]);
    }
    const body = document.getElementById('queue-rows');
    if (body) {
      body.replaceChildren(...st.queue.map((q) => {
        const tr = document.createElement('tr');
        for (const [v, num] of [[q.system, false], [q.queued, true], [q.running, true]]) {
          const td = document.createElement('td');
          td.textContent = String(v);
          if (num) td.className = 'num';
          tr.append(td);
        }
        return tr;
      }));
      const empty = document.getElementById('queue-empty');
      if (empty) empty.hidden = st.queue.length > 0;
    }
    for (const [id, v] of [['agents-count', st.agents], ['running-count', st.running]]) {
      const el = document.getElementById(id);
      if (el) el.textContent = String(v);
    }
  };

  // Only what may still change is asked about: builds not finished, and every jobset
  // shown (a new evaluation may start at any time).
  const query = () => {
    const builds = new Set();
    for (const el of root.querySelectorAll('[data-build]')) {
      const b = el.querySelector('.status');
      if (!b || !final(b.textContent)) builds.add(el.dataset.build);
    }
    const jobsets = [...root.querySelectorAll('[data-jobset]')].map((r) => r.dataset.jobset);
    return '?builds=' + [...builds].slice(0, 200).join(',') + '&jobsets=' + jobsets.slice(0, 200).join(',');
  };

  let busy = false;
  const poll = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const res = await fetch(root.dataset.live + query(), { headers: { Accept: 'application/json' }, cache: 'no-store' });
      if (res.ok) {
        apply(await res.json());
        root.dataset.liveAt = String(Date.now());
      }
    } catch (e) {
      // The next poll tries again; the page keeps what it shows.
    } finally {
      busy = false;
    }
  };
  setInterval(poll, every);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
})();
