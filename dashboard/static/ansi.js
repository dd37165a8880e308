// ANSI SGR escape sequences to DOM nodes. Log text only ever reaches the page as
// text nodes (textContent / createTextNode), never as markup, so a line that says
// <script> shows as text. Colours are classes (fg-0 … fg-15, bg-0 … bg-15); 256-colour
// and true-colour values are set through the CSSOM (el.style), which the page's
// Content-Security-Policy allows. Other escape sequences (cursor movement, erase,
// OSC titles and links) are dropped; a carriage return shows what a terminal would
// leave: the text after the last one.
(function (global) {
  'use strict';

  function newState() {
    return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false, strike: false };
  }

  function copyState(s) {
    return Object.assign({}, s);
  }

  function reset(s) {
    Object.assign(s, newState());
  }

  // colour256 returns a class index (0-15) as a number, or an "rgb(…)" string.
  function colour256(n) {
    if (n < 16) return n;
    if (n < 232) {
      n -= 16;
      const lv = [0, 95, 135, 175, 215, 255];
      return 'rgb(' + lv[Math.floor(n / 36)] + ', ' + lv[Math.floor(n / 6) % 6] + ', ' + lv[n % 6] + ')';
    }
    const g = 8 + (n - 232) * 10;
    return 'rgb(' + g + ', ' + g + ', ' + g + ')';
  }

  function clampByte(x) {
    x = parseInt(x, 10);
    return isNaN(x) ? 0 : Math.max(0, Math.min(255, x));
  }

  // applySGR updates the state with the parameters of one ESC[…m sequence.
  function applySGR(s, params) {
    const ps = params === '' ? [0] : params.split(/[;:]/).map(function (p) { return p === '' ? 0 : parseInt(p, 10); });
    for (let i = 0; i < ps.length; i++) {
      const p = ps[i];
      if (isNaN(p)) continue;
      if (p === 0) reset(s);
      else if (p === 1) s.bold = true;
      else if (p === 2) s.dim = true;
      else if (p === 3) s.italic = true;
      else if (p === 4) s.underline = true;
      else if (p === 7) s.inverse = true;
      else if (p === 9) s.strike = true;
      else if (p === 21 || p === 22) { s.bold = false; s.dim = false; }
      else if (p === 23) s.italic = false;
      else if (p === 24) s.underline = false;
      else if (p === 27) s.inverse = false;
      else if (p === 29) s.strike = false;
      else if (p >= 30 && p <= 37) s.fg = p - 30;
      else if (p === 39) s.fg = null;
      else if (p >= 40 && p <= 47) s.bg = p - 40;
      else if (p === 49) s.bg = null;
      else if (p >= 90 && p <= 97) s.fg = p - 90 + 8;
      else if (p >= 100 && p <= 107) s.bg = p - 100 + 8;
      else if (p === 38 || p === 48) {
        let c = null;
        if (ps[i + 1] === 5 && i + 2 < ps.length) {
          c = colour256(Math.max(0, Math.min(255, ps[i + 2] || 0)));
          i += 2;
        } else if (ps[i + 1] === 2 && i + 4 < ps.length) {
          c = 'rgb(' + clampByte(ps[i + 2]) + ', ' + clampByte(ps[i + 3]) + ', ' + clampByte(ps[i + 4]) + ')';
          i += 4;
        } else {
          break; // malformed: ignore the rest, as terminals do
        }
        if (p === 38) s.fg = c; else s.bg = c;
      }
    }
  }

  function isDefault(s) {
    return s.fg === null && s.bg === null && !s.bold && !s.dim && !s.italic && !s.underline && !s.inverse && !s.strike;
  }

  function styled(text, s) {
    const span = document.createElement('span');
    let fg = s.fg, bg = s.bg;
    if (s.inverse) {
      const t = fg; fg = bg; bg = t;
      if (fg === null) span.classList.add('inv-fg');
      if (bg === null) span.classList.add('inv-bg');
    }
    if (typeof fg === 'number') span.classList.add('fg-' + fg);
    else if (fg !== null) span.style.color = fg;
    if (typeof bg === 'number') span.classList.add('bg-' + bg);
    else if (bg !== null) span.style.backgroundColor = bg;
    if (s.bold) span.classList.add('b');
    if (s.dim) span.classList.add('dim');
    if (s.italic) span.classList.add('i');
    if (s.underline) span.classList.add('u');
    if (s.strike) span.classList.add('s');
    span.textContent = text;
    return span;
  }

  // Escape sequences: CSI (ESC [ params intermediates final), OSC (ESC ] … BEL or
  // ESC \), other escapes (ESC intermediates final, such as ESC ( B); a lone ESC at
  // the end is dropped.
  const escRe = /\x1b(?:\[([0-?]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\|$)|[ -\/]*[0-~]|$)|\x9b([0-?]*)[ -\/]*([@-~])/g;
  // Control characters other than tab; DEL too.
  const ctrlRe = /[\x00-\x08\x0b-\x1f\x7f]/g;

  // render appends line's text to parent (if given) as text nodes and styled spans,
  // carrying the SGR state s from line to line; it updates s. line has no "\n".
  function render(parent, line, s) {
    // A carriage return (progress bars) overwrites the line: keep the text after the
    // last one, but let the escapes before it set the state.
    let start = 0;
    const trimmed = line.replace(/\r+$/, '');
    const cr = trimmed.lastIndexOf('\r');
    if (cr >= 0) {
      const before = trimmed.slice(0, cr);
      escRe.lastIndex = 0;
      let m;
      while ((m = escRe.exec(before)) !== null) {
        if (m[2] === 'm') applySGR(s, m[1]);
        else if (m[5] === 'm') applySGR(s, m[4]);
      }
      start = cr + 1;
    }
    const text = trimmed.slice(start);
    let out = '';
    let outState = copyState(s);
    const flushText = function () {
      if (out === '' || !parent) { out = ''; return; }
      if (isDefault(outState)) parent.appendChild(document.createTextNode(out));
      else parent.appendChild(styled(out, outState));
      out = '';
    };
    let last = 0;
    escRe.lastIndex = 0;
    let m;
    while ((m = escRe.exec(text)) !== null) {
      out += text.slice(last, m.index).replace(ctrlRe, '');
      last = escRe.lastIndex;
      const params = m[2] !== undefined ? m[1] : m[4];
      const final = m[2] !== undefined ? m[2] : m[5];
      if (final === 'm') {
        const next = copyState(s);
        applySGR(next, params);
        Object.assign(s, next);
        if (!sameState(outState, s)) {
          flushText();
          outState = copyState(s);
        }
      }
    }
    out += text.slice(last).replace(ctrlRe, '');
    flushText();
  }

  function sameState(a, b) {
    return a.fg === b.fg && a.bg === b.bg && a.bold === b.bold && a.dim === b.dim && a.italic === b.italic &&
      a.underline === b.underline && a.inverse === b.inverse && a.strike === b.strike;
  }

  global.FCAnsi = { newState: newState, copyState: copyState, render: render };
})(window);
