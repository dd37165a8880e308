// The build page's live log.
//
// It follows the log over the WebSocket (/api/v1/builds/{id}/log/stream), starting
// with the last TAIL lines, and reconnects by itself (with backoff) from the byte
// offset it has. The page holds a window of at most about MAX_LINES line elements:
// while the reader follows the end, lines leave at the top; scrolling up fetches
// earlier lines as byte ranges of the raw log (Range requests) and prepends them, and
// lines far below the reader leave at the bottom, to come back the same way.
//
// Line numbers: every log message carries "line", the number of lines before its
// offset, so the first message fixes the tail's first line number (prefix). Earlier
// lines are fetched backwards, a byte range at a time, from the earliest line start
// known (cut at the range's first newline) and numbered backwards from it; nothing
// before what the reader asks for is downloaded. Lines seen note anchors (the byte
// offset of every BLOCK-th line, and of each range's first line), which later range
// requests start from. Internally lines are numbered relative to the tail's first
// line ("rel"); the page shows prefix + rel + 1.
(function () {
  'use strict';
  const root = document.getElementById('log');
  if (!root || !window.FCAnsi) return;
  const Ansi = window.FCAnsi;

  const TAIL = 1000; // lines asked for first
  const BLOCK = 1000; // lines between anchors; lines per range request
  const MAX_LINES = 4000; // line elements kept in the page
  const EDGE = 400; // px from the top or the bottom of the view that load more
  const MIN_RANGE = 16 << 10, MAX_RANGE = 1 << 20; // bytes per backward range request (loading)
  const SCAN_RANGE = 256 << 10, MAX_SCAN = 8 << 20; // (seeking a #L line above them: doubling)

  const buildID = root.dataset.build;
  const stepID = root.dataset.step || '';
  const base = '/api/v1/builds/' + encodeURIComponent(buildID);
  const rawURL = base + '/log' + (stepID ? '?step=' + encodeURIComponent(stepID) : '');
  const stateEl = document.getElementById('log-state');
  const followBtn = document.getElementById('log-follow');

  const topMore = document.createElement('div');
  topMore.className = 'more';
  topMore.hidden = true;
  const lines = document.createElement('div');
  lines.className = 'lines';
  const bottomMore = document.createElement('div');
  bottomMore.className = 'more';
  bottomMore.hidden = true;
  root.replaceChildren(topMore, lines, bottomMore);

  // What was received.
  let gen = 0; // bumps when the log starts over; async work of an older generation is dropped
  let started = false; // a first log message fixed where the tail starts
  let prefix = null; // lines before the tail's first line (null until the first log message)
  let anchors = []; // {rel, off}, sorted: line rel starts at byte off
  let known = { rel: 0, off: 0 }; // the earliest line start seen: every line from it on was seen
  let liveOff = 0; // the stream's next byte offset
  let lineOff = 0; // offset just past the last complete received line
  let liveRel = 0; // rel of the next line to complete
  let pending = ''; // text of the incomplete last line
  let liveState = Ansi.newState(); // SGR state after the last complete received line
  let queue = []; // received lines not in the page yet: {text, rel, off, state}
  let done = false; // the step ended and everything is here

  // What the page shows: lines [loRel, hiRel) at bytes [loOff, hiOff), then the
  // incomplete last line (partialEl) while attached.
  let loRel = 0, loOff = 0, hiRel = 0, hiOff = 0;
  let partialEl = null;
  let attached = true; // the window reaches the received end: new lines are appended
  let following = true; // the reader is at the bottom: keep them there
  let autoTop = 0; // scrollTop where this viewer last put the view: a reader's scroll up ends following
  let loading = false; // a range request is under way

  let target = null; // the line number in #L…, until it is shown
  let highlighted = null;

  let ws = null;
  let failures = 0;
  let knownAttempts = null; // the step's attempts, as last seen by refreshBuild

  const decoder = new TextDecoder();

  function utf8len(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x80) n++;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { n += 4; i++; }
      else n += 3;
    }
    return n;
  }

  function setState(text) {
    if (stateEl) stateEl.textContent = text;
  }

  // ---- line elements ----

  function number(div) {
    if (prefix === null) return;
    const n = prefix + div.fcRel + 1;
    div.id = 'L' + n;
    div.firstChild.href = '#L' + n;
    div.firstChild.textContent = String(n);
  }

  function lineEl(text, rel, off, state) {
    const div = document.createElement('div');
    div.className = 'line';
    div.fcRel = rel;
    div.fcOff = off;
    const a = document.createElement('a');
    a.className = 'ln';
    div.appendChild(a);
    const tx = document.createElement('span');
    tx.className = 'tx';
    Ansi.render(tx, text, state);
    div.appendChild(tx);
    number(div);
    if (target !== null && prefix !== null && prefix + rel + 1 === target) markTarget(div);
    return div;
  }

  function removePartial() {
    if (partialEl) partialEl.remove();
    partialEl = null;
  }

  function renderPartial() {
    removePartial();
    if (!attached || pending === '') return;
    partialEl = lineEl(pending, liveRel, lineOff, Ansi.copyState(liveState));
    partialEl.classList.add('partial');
    lines.appendChild(partialEl);
  }

  function clearWindow(rel, off) {
    lines.replaceChildren();
    partialEl = null;
    loRel = hiRel = rel;
    loOff = hiOff = off;
  }

  function splitBytes(bytes, base) {
    const out = [];
    let s = 0;
    while (s < bytes.length) {
      const e = bytes.indexOf(10, s);
      const stop = e < 0 ? bytes.length : e;
      out.push({ text: decoder.decode(bytes.subarray(s, stop)), off: base + s });
      s = stop + 1;
    }
    return out;
  }

  function render(ls, firstRel) {
    const frag = document.createDocumentFragment();
    const st = Ansi.newState();
    for (let i = 0; i < ls.length; i++) frag.appendChild(lineEl(ls[i].text, firstRel + i, ls[i].off, st));
    return frag;
  }

  // ---- anchors and ranges ----

  // anchorAtOrBefore is the last anchor with rel <= x (else the first one).
  function anchorAtOrBefore(x) {
    let lo = 0, hi = anchors.length - 1, best = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (anchors[mid].rel <= x) { best = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return anchors[best];
  }

  // anchorAtOrAfter is the first anchor with rel >= x, or null.
  function anchorAtOrAfter(x) {
    let lo = 0, hi = anchors.length - 1, best = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (anchors[mid].rel >= x) { best = mid; hi = mid - 1; } else lo = mid + 1;
    }
    return best < 0 ? null : anchors[best];
  }

  async function fetchRange(from, to) {
    if (to <= from) return new Uint8Array(0);
    const r = await fetch(rawURL, { headers: { Range: 'bytes=' + from + '-' + (to - 1) }, cache: 'no-store' });
    if (r.status === 206) return new Uint8Array(await r.arrayBuffer());
    if (r.status === 200) return new Uint8Array(await r.arrayBuffer()).subarray(from, to);
    throw new Error('HTTP ' + r.status);
  }

  // addAnchor notes that line rel starts at byte off.
  function addAnchor(rel, off) {
    let lo = 0, hi = anchors.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (anchors[mid].rel < rel) lo = mid + 1; else hi = mid;
    }
    if (lo < anchors.length && anchors[lo].rel === rel) return;
    anchors.splice(lo, 0, { rel: rel, off: off });
  }

  // fetchBack fetches the whole lines that end at byte end (a line start, line rel)
  // from a range of about size bytes before it, growing the range while it holds no
  // line start. It notes anchors and the earliest line start, and returns the lines
  // ({text, off}) and the rel of the first.
  async function fetchBack(rel, end, size) {
    for (;;) {
      const from = Math.max(0, end - size);
      const bytes = await fetchRange(from, end);
      let cut = 0;
      if (from > 0) {
        const nl = bytes.indexOf(10);
        if (nl < 0 || nl + 1 >= bytes.length) { // no line start in the range: one long line
          size *= 2;
          continue;
        }
        cut = nl + 1;
      }
      const ls = splitBytes(bytes.subarray(cut), from + cut);
      const first = rel - ls.length;
      for (let i = 0; i < ls.length; i++) {
        const r = first + i;
        if (i === 0 || r % BLOCK === 0) addAnchor(r, ls[i].off);
      }
      if (ls.length > 0 && first < known.rel) known = { rel: first, off: ls[0].off };
      return { ls: ls, rel: first };
    }
  }

  // backSize is a range that holds about BLOCK lines, judging by the lines seen.
  function backSize() {
    const n = liveRel - known.rel;
    const avg = n > 0 ? (lineOff - known.off) / n : 100;
    return Math.max(MIN_RANGE, Math.min(MAX_RANGE, Math.ceil(avg * BLOCK * 1.1)));
  }

  // scanBack fetches backwards from the earliest line seen until line rel is seen
  // (for a #L link above everything seen), noting anchors only.
  async function scanBack(rel, g) {
    let size = SCAN_RANGE;
    rel -= 50; // and some lines before it
    while (rel < known.rel && known.off > 0) {
      await fetchBack(known.rel, known.off, size);
      if (g !== gen) return;
      size = Math.min(MAX_SCAN, size * 2);
    }
  }

  // ---- the stream ----

  function reset() {
    gen++;
    started = false;
    prefix = null;
    anchors = [];
    known = { rel: 0, off: 0 };
    liveOff = lineOff = 0;
    liveRel = 0;
    pending = '';
    liveState = Ansi.newState();
    queue = [];
    clearWindow(0, 0);
    attached = true;
    loading = false;
    updateMore();
  }

  function onLog(m) {
    const off = m.offset || 0;
    if (!started) {
      started = true;
      liveOff = lineOff = off;
      loOff = hiOff = off;
      anchors = [{ rel: 0, off: off }];
      known = { rel: 0, off: off };
      prefix = m.line || 0; // the server counted the lines before the tail
    } else if (off !== liveOff) {
      // Not where this viewer is: come back from its own offset.
      if (ws) ws.close();
      return;
    }
    const parts = (pending + (m.data || '')).split('\n');
    pending = parts.pop();
    liveOff = m.next || off;
    for (const text of parts) {
      const l = { text: text, rel: liveRel, off: lineOff, state: attached ? Ansi.copyState(liveState) : null };
      Ansi.render(null, text, liveState);
      lineOff += utf8len(text) + 1;
      liveRel++;
      if (liveRel % BLOCK === 0) anchors.push({ rel: liveRel, off: lineOff });
      if (attached) queue.push(l);
    }
    lineOff = liveOff - utf8len(pending); // the server's offsets are the truth
    schedule();
  }

  function onEnd(m) {
    if (pending !== '') { // the last line has no newline
      const l = { text: pending, rel: liveRel, off: lineOff, state: Ansi.copyState(liveState) };
      Ansi.render(null, pending, liveState);
      pending = '';
      liveRel++;
      lineOff = liveOff;
      if (attached) queue.push(l);
    }
    done = true;
    setState('finished: ' + (m.status || 'ended'));
    schedule();
    refreshBuild();
  }

  function onMessage(ev) {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    failures = 0;
    switch (m.type) {
      case 'wait':
        setState('waiting for the step to start');
        break;
      case 'attempt': // a new attempt writes a new log from byte 0
        reset();
        setState('a new attempt started');
        break;
      case 'log':
        if (!done) setState('live');
        onLog(m);
        break;
      case 'end':
        onEnd(m);
        break;
    }
  }

  function connect() {
    const params = started ? 'offset=' + liveOff : 'tail=' + TAIL;
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base + '/log/stream?' + params +
      (stepID ? '&step=' + encodeURIComponent(stepID) : '');
    const sock = new WebSocket(url);
    ws = sock;
    sock.onmessage = function (ev) { if (sock === ws) onMessage(ev); };
    sock.onclose = function () {
      if (sock !== ws) return;
      ws = null;
      if (!done) retry();
    };
  }

  function retry() {
    const delay = Math.min(15000, 500 * Math.pow(2, failures)) * (0.75 + Math.random() / 2);
    failures++;
    setState('disconnected; reconnecting in ' + Math.max(1, Math.round(delay / 1000)) + ' s');
    setTimeout(async function () {
      // A new attempt that started while this viewer was away writes a different log.
      const before = knownAttempts;
      const b = await refreshBuild();
      if (b && before !== null && started && stepOf(b) && stepOf(b).attempts !== before) reset();
      if (!done) {
        setState('reconnecting…');
        connect();
      }
    }, delay);
  }

  // ---- rendering ----

  let flushTimer = 0;
  function schedule() {
    if (!flushTimer) flushTimer = setTimeout(flush, 20);
  }

  function flush() {
    flushTimer = 0;
    // The reader may have scrolled up since the last flush without a scroll event yet.
    if (following && !atBottom() && root.scrollTop < autoTop - 4) following = false;
    if (attached && queue.length > 0) {
      if (following && queue.length >= MAX_LINES) {
        // Far more than the window holds arrived at once: keep the last TAIL.
        queue = queue.slice(queue.length - TAIL);
        clearWindow(queue[0].rel, queue[0].off);
      }
      // A reader who is not at the bottom gets no more lines than the window holds;
      // the rest wait in the log (scrolling down fetches them).
      const take = following ? queue.length : Math.max(0, Math.min(queue.length, MAX_LINES + BLOCK - lines.children.length));
      const frag = document.createDocumentFragment();
      for (let i = 0; i < take; i++) frag.appendChild(lineEl(queue[i].text, queue[i].rel, queue[i].off, queue[i].state));
      removePartial();
      lines.appendChild(frag);
      if (take < queue.length) {
        attached = false;
        hiRel = queue[take].rel;
        hiOff = queue[take].off;
      }
      queue = [];
    }
    if (attached) {
      hiRel = liveRel;
      hiOff = lineOff;
      renderPartial();
    }
    if (following) trimTop();
    else trimBottom();
    updateMore();
    stick();
    seekTarget();
    maybeLoad();
  }

  function atBottom() {
    return root.scrollHeight - root.scrollTop - root.clientHeight < 8;
  }

  // stick keeps a following reader at the bottom.
  function stick() {
    if (!following) return;
    root.scrollTop = root.scrollHeight;
    autoTop = root.scrollTop;
  }

  // lineIndexAt is the index of the first line element whose bottom is below y
  // (px in the log's content).
  function lineIndexAt(y) {
    const cs = lines.children;
    let lo = 0, hi = cs.length - 1, best = cs.length;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (cs[mid].offsetTop + cs[mid].offsetHeight > y) { best = mid; hi = mid - 1; } else lo = mid + 1;
    }
    return best;
  }

  // trimTop drops line elements above the view while there are too many.
  function trimTop() {
    const n = lines.children.length;
    if (n <= MAX_LINES) return;
    const k = Math.min(n - Math.floor(MAX_LINES * 3 / 4), lineIndexAt(root.scrollTop - EDGE));
    if (k <= 0) return;
    const before = root.scrollHeight;
    const first = lines.children[k];
    const r = document.createRange();
    r.setStartBefore(lines.firstChild);
    r.setEndBefore(first);
    r.deleteContents();
    root.scrollTop -= before - root.scrollHeight;
    loRel = first.fcRel;
    loOff = first.fcOff;
  }

  // trimBottom drops line elements below the view while there are too many; the
  // window then no longer reaches the end.
  function trimBottom() {
    const n = lines.children.length;
    if (n <= MAX_LINES) return;
    const k = Math.max(Math.floor(MAX_LINES * 3 / 4), lineIndexAt(root.scrollTop + root.clientHeight + EDGE) + 1);
    if (k >= n) return;
    const first = lines.children[k];
    hiRel = first.fcRel;
    hiOff = first.fcOff;
    const r = document.createRange();
    r.setStartBefore(first);
    r.setEndAfter(lines.lastChild);
    r.deleteContents();
    partialEl = null;
    attached = false;
    queue = [];
  }

  function updateMore() {
    const before = prefix === null ? 0 : loRel + prefix;
    topMore.hidden = before === 0;
    topMore.textContent = before.toLocaleString() + ' earlier lines: scroll up to load them';
    bottomMore.hidden = attached;
    bottomMore.textContent = (liveRel - hiRel).toLocaleString() + ' later lines: scroll down to load them';
    if (followBtn) followBtn.hidden = following && attached;
  }

  // maybeLoad loads more when the reader is near an edge of the window.
  function maybeLoad() {
    if (flushTimer) return; // the window is not laid out yet; flush calls again
    if (root.scrollTop < EDGE) loadEarlier();
    else if (!attached && root.scrollHeight - root.scrollTop - root.clientHeight < EDGE) loadLater();
  }

  async function loadEarlier() {
    if (loading || prefix === null || loRel <= -prefix) return;
    loading = true;
    const g = gen;
    try {
      const got = await fetchBack(loRel, loOff, backSize());
      if (g !== gen) return;
      const ls = got.ls.length > BLOCK ? got.ls.slice(got.ls.length - BLOCK) : got.ls;
      if (ls.length === 0) return;
      const frag = render(ls, loRel - ls.length);
      const before = root.scrollHeight;
      const top = root.scrollTop;
      lines.insertBefore(frag, lines.firstChild);
      root.scrollTop = top + (root.scrollHeight - before);
      loRel -= ls.length;
      loOff = ls[0].off;
      if (!following) trimBottom(); // (a following reader only gets here while the window is shorter than the view)
      updateMore();
      stick();
    } catch (e) {
      setState('could not load earlier lines: ' + e.message);
    } finally {
      if (g === gen) loading = false;
    }
    if (g === gen) { seekTarget(); maybeLoad(); }
  }

  async function loadLater() {
    if (loading || attached) return;
    loading = true;
    const g = gen;
    try {
      const b = anchorAtOrAfter(hiRel + BLOCK);
      const end = b ? b.off : lineOff;
      const endRel = b ? b.rel : liveRel;
      const bytes = await fetchRange(hiOff, end);
      if (g !== gen) return;
      const ls = splitBytes(bytes, hiOff);
      lines.appendChild(render(ls, hiRel));
      hiRel += ls.length;
      hiOff = end;
      if (endRel >= liveRel) { // caught up: the stream appends from here
        attached = true;
        queue = [];
        renderPartial();
      }
      trimTop();
      updateMore();
    } catch (e) {
      setState('could not load later lines: ' + e.message);
    } finally {
      if (g === gen) loading = false;
    }
    if (g === gen) { seekTarget(); maybeLoad(); }
  }

  // showFrom replaces the window with the lines from anchor a on (up to 2 blocks),
  // or with the end of the log when toEnd.
  async function showFrom(a, toEnd) {
    loading = true;
    const g = gen;
    try {
      const b = toEnd ? null : anchorAtOrAfter(a.rel + 2 * BLOCK);
      const end = b ? b.off : lineOff;
      const endRel = b ? b.rel : liveRel;
      const bytes = await fetchRange(a.off, end);
      if (g !== gen) return;
      const ls = splitBytes(bytes, a.off);
      clearWindow(a.rel, a.off);
      lines.appendChild(render(ls, a.rel));
      hiRel = a.rel + ls.length;
      hiOff = end;
      attached = endRel >= liveRel;
      queue = [];
      if (attached) renderPartial();
      updateMore();
    } finally {
      if (g === gen) loading = false;
    }
  }

  // ---- #L123 ----

  function markTarget(el) {
    if (highlighted) highlighted.classList.remove('hl');
    highlighted = el;
    el.classList.add('hl');
  }

  function seekTarget() {
    if (target === null || prefix === null || loading) return;
    const rel = target - 1 - prefix;
    if (rel < -prefix) { target = null; return; }
    if (rel < known.rel && known.off > 0) { // above every line seen: find it first
      const g = gen;
      loading = true;
      scanBack(rel - 50, g).then(function () {
        if (g !== gen) return;
        loading = false;
        seekTarget();
      }, function (e) {
        if (g !== gen) return;
        loading = false;
        setState('could not load line ' + target + ': ' + e.message);
        target = null;
      });
      return;
    }
    if (rel >= liveRel + (pending === '' ? 0 : 1)) { // not there (yet)
      if (done) target = null;
      return;
    }
    const el = document.getElementById('L' + target);
    if (el && lines.contains(el)) {
      target = null;
      markTarget(el);
      following = false;
      el.scrollIntoView({ block: 'center' });
      updateMore();
      return;
    }
    showFrom(anchorAtOrBefore(rel - 50), false).then(seekTarget, function (e) {
      setState('could not load line ' + target + ': ' + e.message);
      target = null;
    });
  }

  function readHash() {
    const m = /^#L(\d+)$/.exec(location.hash);
    target = m ? parseInt(m[1], 10) : null;
    if (target !== null) following = false;
    seekTarget();
  }

  // ---- the build's details ----

  function statusClass(s) {
    if (s === 'succeeded') return 'ok';
    if (s === 'queued' || s === 'running') return s;
    return 'bad';
  }

  function fmtDuration(sec) {
    if (sec < 60) return sec.toFixed(1) + 's';
    const h = Math.floor(sec / 3600), m = Math.floor(sec / 60) % 60, s = Math.floor(sec % 60);
    return (h ? h + 'h' : '') + m + 'm' + s + 's';
  }

  function stepOf(b) {
    const steps = b.steps || [];
    if (!stepID) return steps[0] || null;
    return steps.find(function (s) { return String(s.id) === stepID; }) || null;
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  // The rows that apply change with the status (the reason, the outputs, the
  // actions): when it changes, the page's summary is fetched again and swapped in.
  let shownStatus = (document.getElementById('build-summary') || { dataset: {} }).dataset.status;
  async function reloadSummary(status) {
    shownStatus = status;
    try {
      const r = await fetch(location.pathname + location.search, { cache: 'no-store' });
      if (!r.ok) throw new Error(r.statusText);
      const fresh = new DOMParser().parseFromString(await r.text(), 'text/html').getElementById('build-summary');
      const cur = document.getElementById('build-summary');
      if (!fresh || !cur) return;
      // The page now shows another step's log (the build never ran: a dependency
      // failed): there is nothing here to keep.
      if (fresh.dataset.logStep !== cur.dataset.logStep) { location.reload(); return; }
      cur.replaceWith(fresh);
      shownStatus = fresh.dataset.status;
    } catch (e) {
      shownStatus = null; // try again on the next refresh
    }
  }

  function updateInfo(b) {
    if (shownStatus !== undefined && b.status !== shownStatus) reloadSummary(b.status);
    const st = document.getElementById('build-status');
    if (st) {
      st.textContent = b.status;
      st.className = 'status ' + statusClass(b.status);
    }
    const step = stepOf(b);
    if (step) {
      knownAttempts = step.attempts;
      setText('build-agent', step.agent || '');
    }
    if (b.started_at) {
      const end = b.finished_at ? Date.parse(b.finished_at) : Date.now();
      setText('build-duration', fmtDuration((end - Date.parse(b.started_at)) / 1000));
    }
    const outs = document.getElementById('build-outputs');
    if (outs && b.outputs) {
      const frag = document.createDocumentFragment();
      for (const name of Object.keys(b.outputs).sort()) {
        const div = document.createElement('div');
        const n = document.createElement('span');
        n.className = 'outname';
        n.textContent = name;
        const c = document.createElement('code');
        c.textContent = b.outputs[name];
        div.append(n, ' ', c);
        frag.appendChild(div);
      }
      outs.replaceChildren(frag);
    }
  }

  let infoTimer = 0;
  async function refreshBuild() {
    try {
      const r = await fetch(base, { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!r.ok) return null;
      const b = await r.json();
      updateInfo(b);
      clearTimeout(infoTimer);
      if (b.status === 'queued' || b.status === 'running') infoTimer = setTimeout(refreshBuild, done ? 1000 : 5000);
      return b;
    } catch (e) {
      clearTimeout(infoTimer);
      infoTimer = setTimeout(refreshBuild, 5000);
      return null;
    }
  }

  // ---- the reader ----

  root.addEventListener('scroll', function () {
    if (atBottom()) {
      following = attached;
      autoTop = root.scrollTop;
    } else if (root.scrollTop < autoTop - 4) {
      following = false;
    }
    if (followBtn) followBtn.hidden = following;
    maybeLoad();
  }, { passive: true });

  topMore.addEventListener('click', function () { loadEarlier(); });
  bottomMore.addEventListener('click', function () { loadLater(); });
  if (followBtn) {
    followBtn.addEventListener('click', function () {
      following = true;
      if (attached) {
        updateMore();
        stick();
        return;
      }
      showFrom(anchorAtOrBefore(liveRel - TAIL), true).then(function () {
        following = true;
        updateMore();
        stick();
      }, function (e) { setState('could not load the end: ' + e.message); });
    });
  }
  window.addEventListener('hashchange', readHash);

  // For tests and the curious: the viewer's state, read-only in spirit.
  window.fcLog = {
    get socket() { return ws; },
    get lines() { return liveRel; },
    get prefix() { return prefix; },
    get window() { return { loRel: loRel, hiRel: hiRel, attached: attached, following: following }; },
  };

  readHash();
  setState('connecting…');
  refreshBuild();
  connect();
})();
