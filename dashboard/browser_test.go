package dashboard_test

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/dashboard"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// TestBuildPage_FollowsLiveLog: the build page shows lines while the build runs,
// renders ANSI colours, shows markup as text, survives a dropped WebSocket with no
// gap and no duplicate, updates the status when the build ends, and a #L link
// highlights its line after a reload.
func TestBuildPage_FollowsLiveLog(t *testing.T) {
	t.Parallel()
	browser := startBrowser(t)
	const ticks = 80
	const scriptLine = `<script>window.fcInjected=1</script><img src=x onerror="window.fcInjected=2"> & done`
	c, ids := startBuilds(t, map[string]string{
		"live": fmt.Sprintf(`sleep 1; printf '\033[31mred\033[0m plain\n'; echo '%s'; i=1; while [ $i -le %d ]; do echo line $i; i=$((i+1)); sleep 0.1; done; echo > $out`,
			scriptLine, ticks),
	})
	id := ids["live"]
	p := openTab(t, browser)
	p.navigate(fmt.Sprintf("%s/build/%d", c.URL, id))

	// Sample the number of line elements while the API says the build runs. Midway
	// the viewer's connection drops, and the reader scrolls up, then back down.
	const (
		atBottom = `(() => { const l = document.getElementById('log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 8; })()`
		scrollUp = `(() => { document.getElementById('log').scrollTop = 0; return true; })()`
		scrollDn = `(() => { const l = document.getElementById('log'); l.scrollTop = l.scrollHeight; return true; })()`
	)
	grew, lastRunning, phase, mark := 0, -1, 0, 0
	coordtest.Eventually(t, 90*time.Second, "the build finishes", func() bool {
		status := buildStatus(c, id)
		n := eval[int](p, `document.querySelectorAll('#log .line').length`)
		if status != "running" {
			return status != "queued"
		}
		if lastRunning >= 0 && n > lastRunning {
			grew++
		}
		lastRunning = n
		switch {
		case phase == 0 && n >= 15:
			// The connection drops; the viewer comes back from its offset.
			if eval[bool](p, `(() => { const s = window.fcLog.socket; if (s) s.close(); return !!s; })()`) {
				phase = 1
			}
		case phase == 1 && eval[bool](p, `(() => { const l = document.getElementById('log'); return l.scrollHeight > l.clientHeight + 100; })()`):
			// The lines overflow the view.
			if !eval[bool](p, atBottom) {
				t.Errorf("with %d lines, the view is not at the bottom: it does not follow", n)
			}
			eval[bool](p, scrollUp)
			phase, mark = 2, n
		case phase == 2 && n >= mark+5:
			if top := eval[int](p, `document.getElementById('log').scrollTop`); top != 0 {
				t.Errorf("the reader scrolled up, yet new lines moved the view to %d", top)
			}
			eval[bool](p, scrollDn)
			phase, mark = 3, n
		case phase == 3 && n >= mark+5:
			if !eval[bool](p, atBottom) {
				t.Errorf("back at the bottom, the view does not follow new lines")
			}
			phase = 4
		}
		return false
	})
	if grew < 3 {
		t.Errorf("the number of line elements grew %d times while the build ran; want lines arriving live", grew)
	}
	if phase != 4 {
		t.Errorf("the build ended before the test got through the reconnect and the scrolling (phase %d)", phase)
	}
	if s := buildStatus(c, id); s != "succeeded" {
		t.Fatalf("build %d: %s", id, s)
	}
	p.waitJS(30*time.Second, "the page shows the final status and every line",
		`document.getElementById('build-status').textContent === 'succeeded' && document.querySelectorAll('#log .line').length === `+fmt.Sprint(ticks+2))

	// Every line once, in order, numbered from 1, across the reconnect.
	var want []string
	want = append(want, "red plain", scriptLine)
	for i := 1; i <= ticks; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	got := eval[[]string](p, `[...document.querySelectorAll('#log .line')].map(l => l.querySelector('.ln').textContent + ' ' + l.querySelector('.tx').textContent)`)
	for i := range max(len(got), len(want)) {
		w := ""
		if i < len(want) {
			w = fmt.Sprintf("%d %s", i+1, want[i])
		}
		if i >= len(got) || got[i] != w {
			t.Fatalf("line element %d: got %q, want %q (all: %q)", i, at(got, i), w, got)
		}
	}

	// ANSI: a coloured span with the text and no escape characters anywhere.
	if red := eval[string](p, `(() => { const s = document.querySelector('#L1 .tx span.fg-1');
		return s ? s.textContent + '|' + getComputedStyle(s).color + '|' + getComputedStyle(s.parentNode).color : 'none'; })()`); !strings.HasPrefix(red, "red|") ||
		strings.Split(red, "|")[1] == strings.Split(red, "|")[2] {
		t.Errorf("line 1's red span: %q (text|colour|parent colour)", red)
	}
	if eval[bool](p, `document.getElementById('log').textContent.includes('\x1b')`) {
		t.Errorf("the log shows escape characters")
	}
	// Markup in the log is text: nothing was injected, nothing ran.
	if n := eval[int](p, `document.querySelectorAll('#log script, #log img').length`); n != 0 {
		t.Errorf("%d elements injected into the log", n)
	}
	if v := eval[string](p, `String(window.fcInjected)`); v != "undefined" {
		t.Errorf("window.fcInjected = %s: the log's markup ran", v)
	}
	if agent := eval[string](p, `document.getElementById('build-agent').textContent`); agent != "builder" {
		t.Errorf("agent shown: %q", agent)
	}
	if raw := eval[string](p, `document.getElementById('log-raw').getAttribute('href')`); raw != fmt.Sprintf("/api/v1/builds/%d/log", id) {
		t.Errorf("raw log link: %q", raw)
	}

	// A line's link survives a reload: the line is highlighted and in view.
	p.navigate(fmt.Sprintf("%s/build/%d#L40", c.URL, id))
	p.waitJS(30*time.Second, "line 40 is highlighted and in view", `(() => {
		const l = document.querySelector('#L40.hl'), box = document.getElementById('log');
		if (!l) return false;
		const r = l.getBoundingClientRect(), b = box.getBoundingClientRect();
		return r.top >= b.top && r.bottom <= b.bottom && l.querySelector('.tx').textContent === 'line 38'; })()`)
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return "(none)"
}

// consistentJS checks that every line element's number matches its text (prefix
// and the number), in order: it returns "" or what is wrong.
func consistentJS(prefix string) string {
	return `(() => { const ls = [...document.querySelectorAll('#log .line')]; if (ls.length === 0) return 'no lines';
		for (let i = 0; i < ls.length; i++) {
			const n = ls[i].querySelector('.ln').textContent, tx = ls[i].querySelector('.tx').textContent;
			if (tx !== '` + prefix + `' + n) return 'line element ' + i + ': ' + n + ' ' + tx;
			if (i > 0 && +n !== +ls[i-1].querySelector('.ln').textContent + 1) return 'gap before line element ' + i;
		}
		return ''; })()`
}

// TestBuildPage_LongLog: a page following a fast build keeps a bounded number of
// line elements; a 100,000-line log opens with its tail, numbered right, with far
// fewer line elements than lines; scrolling up loads earlier lines, and a link to an
// early line loads it.
func TestBuildPage_LongLog(t *testing.T) {
	t.Parallel()
	browser := startBrowser(t)
	const n = 100000
	const streamed = 20000
	c, ids := startBuilds(t, map[string]string{
		"long": fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "long line $i"; i=$((i+1)); done; echo > $out`, n),
		"fast": fmt.Sprintf(`sleep 1; i=1; while [ $i -le %d ]; do echo "fast line $i"; [ $((i %% 500)) = 0 ] && sleep 0.1; i=$((i+1)); done; echo > $out`, streamed),
	})

	// Following a build that prints 5,000 lines a second.
	id := ids["fast"]
	p := openTab(t, browser)
	p.navigate(fmt.Sprintf("%s/build/%d", c.URL, id))
	most, seen := 0, 0
	coordtest.Eventually(t, 90*time.Second, "the fast build finishes", func() bool {
		status := buildStatus(c, id)
		if status == "running" {
			most = max(most, eval[int](p, `document.querySelectorAll('#log .line').length`))
			seen = max(seen, eval[int](p, `window.fcLog.lines`))
		}
		return status != "queued" && status != "running"
	})
	if seen < streamed/4 || most >= 5000 {
		t.Errorf("while %d lines arrived the page held up to %d line elements", seen, most)
	}
	p.waitJS(30*time.Second, "the fast build's last line is shown", `(() => { const ls = document.querySelectorAll('#log .line');
		return ls.length > 0 && ls[ls.length-1].querySelector('.ln').textContent === '`+fmt.Sprint(streamed)+`'; })()`)
	if msg := eval[string](p, consistentJS("fast line ")); msg != "" {
		t.Errorf("fast build: %s", msg)
	}
	if count := eval[int](p, `document.querySelectorAll('#log .line').length`); count >= 5000 {
		t.Errorf("after the fast build the page holds %d line elements", count)
	}
	t.Logf("following %d lines, the page held at most %d line elements", streamed, most)

	id = ids["long"]
	coordtest.Eventually(t, 90*time.Second, "the build finishes", func() bool {
		s := buildStatus(c, id)
		return s != "queued" && s != "running"
	})
	if s := buildStatus(c, id); s != "succeeded" {
		t.Fatalf("build %d: %s", id, s)
	}
	p = openTab(t, browser)
	rawLog := p.watchRequests(fmt.Sprintf("/api/v1/builds/%d/log", id))
	p.navigate(fmt.Sprintf("%s/build/%d", c.URL, id))
	lines := `[...document.querySelectorAll('#log .line')]`
	consistent := consistentJS("long line ")
	first := `+document.querySelector('#log .line .ln').textContent`
	p.waitJS(60*time.Second, "the tail is shown and numbered", `(() => { const ls = document.querySelectorAll('#log .line');
		return ls.length > 0 && ls[ls.length-1].querySelector('.ln').textContent === '`+fmt.Sprint(n)+`'; })()`)
	if msg := eval[string](p, consistent); msg != "" {
		t.Fatalf("tail: %s", msg)
	}
	count := eval[int](p, lines+`.length`)
	if count >= 5000 || eval[int](p, first) <= 1 {
		t.Fatalf("the page holds %d line elements from line %d for a %d-line log", count, eval[int](p, first), n)
	}
	t.Logf("%d line elements for %d lines", count, n)

	// Opening the page fetches nothing like the whole log: the stream numbers its tail.
	logBytes := 0
	for i := 1; i <= n; i++ {
		logBytes += len(fmt.Sprintf("long line %d\n", i))
	}
	rawPath := fmt.Sprintf("/api/v1/builds/%d/log", id)
	rangeBytes := `performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '` + rawPath +
		`').reduce((s, e) => s + e.encodedBodySize, 0)`
	// Counted once the page has the whole stream (its end message may still start a
	// load) and every request for the raw log it made has finished.
	p.waitJS(30*time.Second, "the page has the end of the stream", `document.getElementById('log-state').textContent.startsWith('finished')`)
	opened := rawLog.settled(t, 30*time.Second)
	if got := p.bodyBytes(rawPath, opened, 30*time.Second); got > logBytes/20 {
		t.Errorf("opening the page fetched %d bytes of the %d-byte log", got, logBytes)
	} else {
		t.Logf("opening the page fetched %d bytes of the log in %d requests", got, opened)
	}

	// Scrolling to the top loads earlier lines, a block at a time, and keeps the
	// number of elements bounded.
	for range 6 {
		before := eval[int](p, first)
		eval[bool](p, `(() => { document.getElementById('log').scrollTop = 0; return true; })()`)
		p.waitJS(30*time.Second, fmt.Sprintf("lines before %d are loaded", before), first+` < `+fmt.Sprint(before))
	}
	if msg := eval[string](p, consistent); msg != "" {
		t.Fatalf("after scrolling up: %s", msg)
	}
	if count := eval[int](p, lines+`.length`); count >= 6000 {
		t.Errorf("after scrolling up the page holds %d line elements", count)
	}
	// Scrolling on reaches line 1, numbered right all the way.
	p.waitJS(60*time.Second, "line 1 is loaded", `(() => { document.getElementById('log').scrollTop = 0; return `+first+` === 1; })()`)
	if msg := eval[string](p, consistent); msg != "" {
		t.Fatalf("at the top: %s", msg)
	}
	if count := eval[int](p, lines+`.length`); count >= 6000 {
		t.Errorf("at the top the page holds %d line elements", count)
	}
	t.Logf("scrolling to the top fetched %d bytes of the %d-byte log", eval[int](p, rangeBytes), logBytes)
	// The watch behind the opening check sees the page's requests: those of the scrolling.
	entries := eval[int](p, `performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === '`+rawPath+`').length`)
	if n := rawLog.settled(t, 30*time.Second); n == 0 || n > entries {
		t.Errorf("DevTools saw %d finished raw-log requests; the page has %d performance entries for them", n, entries)
	}

	// A link to an early line loads the lines around it.
	p.navigate(fmt.Sprintf("%s/build/%d#L5", c.URL, id))
	p.waitJS(60*time.Second, "line 5 is highlighted", `(() => { const l = document.querySelector('#L5.hl');
		return l && l.querySelector('.tx').textContent === 'long line 5'; })()`)
	if msg := eval[string](p, consistent); msg != "" {
		t.Fatalf("around line 5: %s", msg)
	}
	if count := eval[int](p, lines+`.length`); count >= 5000 {
		t.Errorf("around line 5 the page holds %d line elements", count)
	}
	// Following the end brings the tail back.
	eval[bool](p, `(() => { document.getElementById('log-follow').click(); return true; })()`)
	p.waitJS(60*time.Second, "the end is shown again", `(() => { const ls = document.querySelectorAll('#log .line');
		return ls.length > 0 && ls[ls.length-1].querySelector('.ln').textContent === '`+fmt.Sprint(n)+`'; })()`)
	if msg := eval[string](p, consistent); msg != "" {
		t.Fatalf("at the end again: %s", msg)
	}
}

// TestANSI_RendersSGRAsClassesAndTextOnly: the ANSI renderer turns SGR sequences into
// classes (and CSSOM colours), carries the state from line to line, drops other
// escapes, and never makes markup out of log text.
func TestANSI_RendersSGRAsClassesAndTextOnly(t *testing.T) {
	t.Parallel()
	d, err := dashboard.New(dashboard.Config{}, nil) // static files and error pages need no database
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.Handler())
	t.Cleanup(srv.Close)
	p := openTab(t, startBrowser(t))
	p.navigate(srv.URL + "/no-such-page")
	eval[bool](p, `new Promise((ok, fail) => { const s = document.createElement('script'); s.src = '/static/ansi.js';
		s.onload = () => ok(true); s.onerror = fail; document.head.append(s); })`)

	cases := []struct {
		name  string
		lines []string
		want  []string
	}{
		{"plain", []string{"plain text"}, []string{"plain text"}},
		{"red", []string{"\x1b[31mred\x1b[0m plain"}, []string{`<span class="fg-1">red</span> plain`}},
		{"markup is text", []string{"<script>alert(1)</script> & <b>"}, []string{"&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;"}},
		{"markup in colour", []string{"\x1b[32m<img src=x onerror=alert(1)>"}, []string{`<span class="fg-2">&lt;img src=x onerror=alert(1)&gt;</span>`}},
		{"bold then not", []string{"\x1b[1;32mbold green\x1b[22mgreen"}, []string{`<span class="fg-2 b">bold green</span><span class="fg-2">green</span>`}},
		{"bright and default", []string{"\x1b[91mbright\x1b[39m default"}, []string{`<span class="fg-9">bright</span> default`}},
		{"background", []string{"\x1b[41;97mwhite on red\x1b[m"}, []string{`<span class="fg-15 bg-1">white on red</span>`}},
		{"256 colours", []string{"\x1b[38;5;196mx\x1b[38;5;4my\x1b[0m"}, []string{`<span style="color: rgb(255, 0, 0);">x</span><span class="fg-4">y</span>`}},
		{"true colour", []string{"\x1b[48;2;1;2;3mx\x1b[0m"}, []string{`<span style="background-color: rgb(1, 2, 3);">x</span>`}},
		{"attributes", []string{"\x1b[3;4;9mx\x1b[23;24;29my"}, []string{`<span class="i u s">x</span>y`}},
		{"inverse", []string{"\x1b[7minv\x1b[27m"}, []string{`<span class="inv-fg inv-bg">inv</span>`}},
		{"state carries over lines", []string{"\x1b[33mstart", "continued\x1b[0m", "after"},
			[]string{`<span class="fg-3">start</span>`, `<span class="fg-3">continued</span>`, "after"}},
		{"carriage return", []string{"progress 10%\r\x1b[36mprogress 100%\r"}, []string{`<span class="fg-6">progress 100%</span>`}},
		{"other escapes dropped", []string{"\x1b[2K\x1b[1Aerased\x1b]0;title\x07 text\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\x1b(B"}, []string{"erased textlink"}},
		{"control characters", []string{"bell\x07 back\x08 tab\there\x1b"}, []string{"bell back tab\there"}},
		{"empty", []string{"", "\x1b[0m"}, []string{"", ""}},
	}
	in := make([][]string, len(cases))
	for i, c := range cases {
		in[i] = c.lines
	}
	js, _ := json.Marshal(in)
	got := eval[[][]string](p, `(`+string(js)+`).map(lines => { const st = FCAnsi.newState();
		return lines.map(l => { const d = document.createElement('div'); FCAnsi.render(d, l, st); return d.innerHTML; }); })`)
	for i, c := range cases {
		if fmt.Sprint(got[i]) != fmt.Sprint(c.want) {
			t.Errorf("%s: %q\n got %q\nwant %q", c.name, c.lines, got[i], c.want)
		}
	}
}
