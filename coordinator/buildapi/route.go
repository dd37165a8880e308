package buildapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// hopHeader marks a request another coordinator of the cluster forwarded: it is
// served where it arrives, never forwarded again (gossip may lag a reconnect).
const hopHeader = "X-FC-Cluster-Hop"

// forward serves a running step's log through the coordinator its agent is
// connected to, when that is another one: the log is written there as the agent
// streams it, and its hub wakes the viewers, so a viewer there gets every byte
// once, live, with that log's offsets. The request goes as it came (the same
// credentials, checked there against the same database). It reports whether it
// served the request.
func (b *Builds) forward(w http.ResponseWriter, r *http.Request, step storage.StepInfo) bool {
	if b.cfg.Route == nil || step.Status != "running" || step.AgentID == nil || r.Header.Get(hopHeader) != "" {
		return false
	}
	api, ok := b.cfg.Route(*step.AgentID)
	if !ok {
		return false
	}
	target, err := url.Parse(api)
	if err != nil {
		return false
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
			pr.Out.Header.Set(hopHeader, "1")
			pr.SetXForwarded()
		},
		FlushInterval: -1, // a live log: every write at once
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			b.log.Warn("forward a live log", "step", step.ID, "to", api, "err", err)
			httpkit.WriteError(w, r, http.StatusBadGateway, "the coordinator building this step does not answer: "+err.Error())
		},
	}
	b.log.Debug("live log served through the agent's coordinator", "step", step.ID, "to", api)
	proxy.ServeHTTP(w, r)
	return true
}

// relay is how a viewer that began here, before the step ran, follows it once it
// runs on an agent connected to another member: a WebSocket to that member's stream
// from the viewer's offset, with the viewer's credentials, whose messages are passed
// on as they are. It reports whether it took the viewer over.
func (b *Builds) relay(r *http.Request) func(ctx context.Context, st storage.StepInfo, offset int64) *websocket.Conn {
	if b.cfg.Route == nil || r.Header.Get(hopHeader) != "" {
		return nil
	}
	h := http.Header{hopHeader: {"1"}}
	for _, k := range []string{"Authorization", "Cookie"} {
		if v := r.Header.Values(k); len(v) > 0 {
			h[k] = v
		}
	}
	path := r.URL.Path
	return func(ctx context.Context, st storage.StepInfo, offset int64) *websocket.Conn {
		if st.AgentID == nil {
			return nil
		}
		api, ok := b.cfg.Route(*st.AgentID)
		if !ok {
			return nil
		}
		target := "ws" + strings.TrimPrefix(api, "http") + path + fmt.Sprintf("?step=%d&offset=%d", st.ID, offset)
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		up, resp, err := websocket.DefaultDialer.DialContext(dctx, target, h)
		if err != nil {
			if resp != nil {
				resp.Body.Close()
			}
			b.log.Warn("follow a live log through the agent's coordinator", "step", st.ID, "to", api, "err", err)
			return nil // followed here; its periodic recheck tries again
		}
		b.log.Debug("live log relayed from the agent's coordinator", "step", st.ID, "from", api)
		return up
	}
}

// pipe passes the messages of up (another member's stream of this step) on to the
// viewer as they are, pinging the viewer meanwhile, until either side ends.
func (f *follower) pipe(ctx context.Context, up *websocket.Conn) error {
	defer up.Close()
	msgs, errc := make(chan []byte), make(chan error, 1)
	go func() {
		for {
			_, data, err := up.ReadMessage()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- data:
			case <-ctx.Done():
				return
			}
		}
	}()
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case data := <-msgs:
			_ = f.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := f.conn.WriteMessage(websocket.TextMessage, data); err != nil {
				return err
			}
		case err := <-errc:
			if websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				return f.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "step ended"),
					time.Now().Add(time.Second))
			}
			return err
		case <-ping.C:
			if err := f.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
				return err
			}
		}
	}
}
