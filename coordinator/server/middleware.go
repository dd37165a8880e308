package server

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/coordinator/metrics"
)

// securityHeaders sets the headers every answer carries. The values are shared
// slices, assigned rather than Set, so a request allocates none (net/http only reads
// them, and Set or Add elsewhere replaces or copies).
func securityHeaders(next http.Handler) http.Handler {
	nosniff, deny, referrer := []string{"nosniff"}, []string{"DENY"}, []string{"strict-origin-when-cross-origin"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["X-Content-Type-Options"] = nosniff
		h["X-Frame-Options"] = deny
		h["Referrer-Policy"] = referrer
		next.ServeHTTP(w, r)
	})
}

// bodyLimit caps request bodies; decoding past the cap answers 413.
func bodyLimit(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > n {
				httpkit.WriteError(w, r, http.StatusRequestEntityTooLarge, "request body is larger than "+strconv.FormatInt(n, 10)+" bytes")
				return
			}
			if r.Body != nil && r.Body != http.NoBody { // a GET has nothing to limit
				r.Body = http.MaxBytesReader(w, r.Body, n)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// isWebSocket reports whether r asks to become a WebSocket.
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// bodyDeadline gives a request's body d (server.request_timeout) to arrive, counted
// from the end of its headers (server.header_timeout bounds those), so a client that
// trickles a byte now and then holds neither a connection nor a handler for longer:
// the handler's read fails (408 from the API) and the connection is closed.
//
// The deadline is the connection's read deadline, so it is cleared as soon as the body
// has been read to its end: net/http then reads the idle connection to notice a client
// that goes away, and an answer that takes longer to send than d (a large NAR, a
// product) must not be cut by it. Requests without a body get no deadline, nor do
// WebSocket upgrades: a session lives as long as its pings are answered (yamux
// keepalives on agent and push sessions, pings on log streams), and gorilla/websocket
// clears any deadline when it takes the connection over. NAR uploads are not HTTP
// bodies: they travel on the agent's session, where every stream read has an idle
// deadline (protocol.IdleStream), so a slow but steady upload lives on.
func bodyDeadline(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body == nil || r.Body == http.NoBody || isWebSocket(r) {
				next.ServeHTTP(w, r)
				return
			}
			rc := http.NewResponseController(w)
			if err := rc.SetReadDeadline(time.Now().Add(d)); err != nil {
				next.ServeHTTP(w, r) // a writer without deadlines (not a network connection)
				return
			}
			// An unread rest keeps the deadline: net/http discards it under that bound.
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			next.ServeHTTP(w, r)
		})
	}
}

// deadlineBody clears the connection's read deadline once the body has been read.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// timeout bounds ordinary requests; long-lived WebSocket streams are exempt.
func timeout(d time.Duration) func(http.Handler) http.Handler {
	bounded := middleware.Timeout(d)
	return func(next http.Handler) http.Handler {
		withTimeout := bounded(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isWebSocket(r) {
				next.ServeHTTP(w, r)
				return
			}
			withTimeout.ServeHTTP(w, r)
		})
	}
}

// observe records each request's metrics by route pattern and logs it.
func observe(m *metrics.Metrics, log *slog.Logger) func(http.Handler) http.Handler {
	series := newRequestSeries(m)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			next.ServeHTTP(ww, r)
			elapsed := time.Since(start)
			route := "unmatched"
			if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
				route = rc.RoutePattern()
			}
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK
			}
			count, latency := series.get(route, r.Method, status)
			count.Inc()
			latency.Observe(elapsed.Seconds())
			level := slog.LevelInfo
			if status < 400 && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
				level = slog.LevelDebug // reads are many; errors and writes are worth a line
			}
			if !log.Enabled(r.Context(), level) {
				return // the attributes below cost allocations even when dropped
			}
			log.Log(r.Context(), level, "http request", "method", r.Method, "path", r.URL.Path,
				"route", route, "status", status, "bytes", ww.BytesWritten(),
				"duration_ms", float64(elapsed.Microseconds())/1000, "remote", clientIP(r))
		})
	}
}

// requestSeries caches the metric series of each route, method and status seen: a
// WithLabelValues per request hashed three labels and allocated the status's text.
type requestSeries struct {
	m  *metrics.Metrics
	mu sync.RWMutex
	by map[seriesKey]seriesPair
}

type seriesKey struct {
	route, method string
	status        int
}

type seriesPair struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

func newRequestSeries(m *metrics.Metrics) *requestSeries {
	return &requestSeries{m: m, by: map[seriesKey]seriesPair{}}
}

// maxSeries bounds the cache; methods are not checked by net/http, so a client could
// otherwise grow it without end (past it, series are looked up each time).
const maxSeries = 4096

func (s *requestSeries) get(route, method string, status int) (prometheus.Counter, prometheus.Observer) {
	k := seriesKey{route, method, status}
	s.mu.RLock()
	p, ok := s.by[k]
	s.mu.RUnlock()
	if ok {
		return p.count, p.latency
	}
	p = seriesPair{s.m.HTTPRequests.WithLabelValues(route, method, strconv.Itoa(status)), s.m.HTTPDuration.WithLabelValues(route, method)}
	s.mu.Lock()
	if len(s.by) < maxSeries {
		s.by[k] = p
	}
	s.mu.Unlock()
	return p.count, p.latency
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// forwardedClient is the client address of a request that came through trusted
// reverse proxies: X-Forwarded-For read from its end (each proxy appends the address
// it heard from), the first hop that is not a trusted proxy. A request from anywhere
// else, or whose header does not parse, is keyed on its own peer address: a client
// cannot pick its key by sending the header itself.
func forwardedClient(r *http.Request, trusted []netip.Prefix) string {
	peer := clientIP(r)
	if len(trusted) == 0 || !isTrusted(peer, trusted) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		hop := strings.TrimSpace(hops[i])
		if _, err := netip.ParseAddr(hop); err != nil {
			return client
		}
		client = hop
		if !isTrusted(hop, trusted) {
			return hop
		}
	}
	return client
}

func isTrusted(ip string, trusted []netip.Prefix) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ipLimiter is a token bucket per client address (rate_limit_rps, rate_limit_burst).
type ipLimiter struct {
	rps   rate.Limit
	burst int
	// trusted are the reverse proxies whose X-Forwarded-For names the client.
	trusted []netip.Prefix

	mu      sync.Mutex
	clients map[string]*clientBucket
	swept   time.Time
}

type clientBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newIPLimiter(rps float64, burst int, trusted []netip.Prefix) *ipLimiter {
	if burst < 1 {
		burst = max(1, int(rps))
	}
	return &ipLimiter{rps: rate.Limit(rps), burst: burst, trusted: trusted, clients: map[string]*clientBucket{}, swept: time.Now()}
}

// reserve takes a token for ip, or says how long until one is free.
func (l *ipLimiter) reserve(ip string, now time.Time) (ok bool, wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute { // forget clients idle long enough to have a full bucket
		for k, c := range l.clients {
			if now.Sub(c.seen) > time.Minute {
				delete(l.clients, k)
			}
		}
		l.swept = now
	}
	c := l.clients[ip]
	if c == nil {
		c = &clientBucket{lim: rate.NewLimiter(l.rps, l.burst)}
		l.clients[ip] = c
	}
	c.seen = now
	r := c.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *ipLimiter) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ok, wait := l.reserve(forwardedClient(r, l.trusted), time.Now()); !ok {
			secs := int(wait/time.Second) + 1
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			httpkit.WriteError(w, r, http.StatusTooManyRequests, "rate limit exceeded; retry in "+strconv.Itoa(secs)+" s")
			return
		}
		next.ServeHTTP(w, r)
	})
}
