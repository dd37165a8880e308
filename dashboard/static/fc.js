// Shared page behaviour, all optional: pages work without it.
// Relative times ("3 min ago") are kept current; the exact time stays in the title.
(() => {
  'use strict';
  const fmt = (t) => {
    let d = (Date.now() - t) / 1000;
    const future = d < 0;
    d = Math.abs(d);
    if (d < 5) return 'just now';
    let s;
    if (d < 60) s = Math.floor(d) + ' s';
    else if (d < 3600) s = Math.floor(d / 60) + ' min';
    else if (d < 172800) s = Math.floor(d / 3600) + ' h';
    else s = Math.floor(d / 86400) + ' days';
    return future ? 'in ' + s : s + ' ago';
  };
  const refresh = () => {
    for (const el of document.querySelectorAll('time[datetime]')) {
      if (el.dataset.fixed !== undefined) continue;
      const t = Date.parse(el.getAttribute('datetime'));
      if (!Number.isNaN(t)) el.textContent = fmt(t);
    }
  };
  setInterval(refresh, 15000);
})();
