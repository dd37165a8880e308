// Upload streams: path checks, the upload plan, and admission (which paths an agent may send).

package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// checkInfo validates what an agent says about a path before anything is read.
func checkInfo(pi protocol.PathInfo) (*nixhash.Hash, error) {
	if err := validStorePath(pi.StorePath); err != nil {
		return nil, fmt.Errorf("store path %q: %w", pi.StorePath, err)
	}
	h, err := parseHash(pi.NarHash)
	if err != nil || h.Algo() != nixhash.SHA256 {
		return nil, fmt.Errorf("%s: nar hash %q is not a sha256 hash", pi.StorePath, pi.NarHash)
	}
	if pi.NarSize <= 0 {
		return nil, fmt.Errorf("%s: nar size %d", pi.StorePath, pi.NarSize)
	}
	for _, r := range pi.References {
		if err := validStorePath(r); err != nil {
			return nil, fmt.Errorf("%s: reference %q: %w", pi.StorePath, r, err)
		}
	}
	if pi.Deriver != "" {
		if err := validStorePath(pi.Deriver); err != nil {
			return nil, fmt.Errorf("%s: deriver %q: %w", pi.StorePath, pi.Deriver, err)
		}
	}
	return &h.Hash, nil
}

// HandleUpload serves one upload stream from an agent (see protocol.StreamUpload).
// What the agent may send is scoped to its work (see admit); the whole request is
// refused, before any data, when one path it would have to send is not.
func (c *Cache) HandleUpload(ctx context.Context, agentID int64, st io.ReadWriter) error {
	var req protocol.UploadRequest
	if err := protocol.ReadFrame(st, &req); err != nil {
		return fmt.Errorf("read upload request: %w", err)
	}
	c.m.offered.Add(float64(len(req.Paths)))
	infos := make(map[string]protocol.PathInfo, len(req.Paths))
	hashes := make([]string, 0, len(req.Paths))
	for _, pi := range req.Paths {
		if _, err := checkInfo(pi); err != nil {
			c.m.rejections.WithLabelValues("bad_info").Inc()
			return protocol.WriteFrame(st, protocol.UploadPlan{Error: err.Error()})
		}
		infos[pi.StorePath] = pi
		hashes = append(hashes, hashPart(pi.StorePath))
	}
	// An offer may leave out what the agent knows the cache holds: the references
	// outside it are looked up with the offered paths, in the same query.
	outside := outsideReferences(req.Paths, infos)
	n := len(hashes)
	for _, r := range outside {
		hashes = append(hashes, hashPart(r))
	}
	outsideHashes := hashes[n:]
	present, err := c.db.PresentHashParts(ctx, hashes)
	if err != nil {
		_ = protocol.WriteFrame(st, protocol.UploadPlan{Error: "coordinator database unavailable"})
		return err
	}
	plan := protocol.UploadPlan{Missing: []string{}, Upstream: []string{}, Uncompressed: c.cfg.PlainNARs, ReferencesChecked: true}
	upstream := map[string]bool{}
	for i, r := range outside {
		switch h := outsideHashes[i]; {
		case present[h]:
		case c.inUpstream(ctx, h):
			upstream[h] = true
		default:
			plan.Unknown = append(plan.Unknown, r)
		}
	}
	if len(plan.Unknown) > 0 {
		c.m.rejections.WithLabelValues("incomplete_offer").Inc()
		more := ""
		if len(plan.Unknown) > 1 {
			more = fmt.Sprintf(" (and %d more)", len(plan.Unknown)-1)
		}
		plan.Missing, plan.Upstream = nil, nil
		plan.Error = fmt.Sprintf("the offer refers to %s%s, which it does not include and the cache does not hold: offer the whole closure", plan.Unknown[0], more)
		return protocol.WriteFrame(st, plan)
	}
	planned := make(map[string]bool, len(req.Paths))
	for _, pi := range req.Paths {
		h := hashPart(pi.StorePath)
		switch {
		case planned[pi.StorePath] || present[h]:
		case c.inUpstream(ctx, h):
			upstream[h] = true
			plan.Upstream = append(plan.Upstream, pi.StorePath)
		default:
			plan.Missing = append(plan.Missing, pi.StorePath)
		}
		planned[pi.StorePath] = true
	}
	var admitted map[string]admission
	if !req.Query && len(plan.Missing) > 0 {
		admitted, err = c.admit(ctx, agentID, plan.Missing, infos)
		if err != nil {
			c.m.rejections.WithLabelValues("not_allowed").Inc()
			c.log.Warn("upload refused", "agent", agentID, "paths", len(plan.Missing), "err", err)
			return protocol.WriteFrame(st, protocol.UploadPlan{Error: err.Error()})
		}
	}
	if err := protocol.WriteFrame(st, plan); err != nil || req.Query {
		return err
	}
	// known holds the hash parts the cache held at the plan (pending 0) and those this
	// stream has staged since, in groups being committed (with the step whose pending
	// output each is, or 0): references found there need no query. A group that fails
	// to commit fails every later one too, so no path is recorded with a reference
	// that did not make it.
	known := make(map[string]int64, len(present))
	for h := range present {
		known[h] = 0
	}
	g := newUploadGroup()
	com := c.startCommitter(ctx, agentID, st)
	for i, p := range plan.Missing {
		res, broken := c.receive(ctx, infos[p], admitted[p], upstream, known, g, st)
		if res != nil {
			g.results = append(g.results, *res)
		}
		last := i == len(plan.Missing)-1
		if broken || last || len(g.items) >= c.cfg.GroupPaths || g.bytes >= c.cfg.GroupBytes {
			for h, step := range g.staged {
				known[h] = step
			}
			com.groups <- g // committed while the next paths arrive
			g = newUploadGroup()
		}
		if broken {
			close(com.groups)
			<-com.done
			return fmt.Errorf("upload of %s broke off", p)
		}
	}
	close(com.groups)
	return <-com.done
}

// outsideReferences is the references of offered paths that are not offered
// themselves, each once, in the order first seen.
func outsideReferences(offered []protocol.PathInfo, byPath map[string]protocol.PathInfo) []string {
	var out []string
	seen := map[string]bool{}
	for _, pi := range offered {
		for _, r := range pi.References {
			if _, ok := byPath[r]; ok || seen[r] {
				continue
			}
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// admission is why one path of an upload may be stored, and what to check of it.
type admission struct {
	// pendingStep: an output of this step, leased to the agent: stored unsigned and
	// not served until the step's success is recorded.
	pendingStep int64
	push        bool            // accepted only because the agent has the push permission
	ca          *contentAddress // the content must have this address (nil: input-addressed)
}

// admit decides, before any data is sent, which of the paths an agent may upload. A
// builder is trusted with the work it was given, not with the cache:
//   - an output of a step leased to it, at the path the derivation declares (a
//     fixed output also with the content the derivation declares);
//   - while it holds an evaluation's lease, a content-addressed path (the .drv
//     closure: .drv files and sources), whose path the cache recomputes from its
//     content address and references, and later checks against the content;
//   - anything, when an admin granted it the push permission.
//
// A path that declares a content address must match it in every case.
func (c *Cache) admit(ctx context.Context, agentID int64, paths []string, infos map[string]protocol.PathInfo) (map[string]admission, error) {
	sc, err := c.db.UploadScope(ctx, agentID)
	if err != nil {
		return nil, fmt.Errorf("agent %d: cannot read what it may upload: %w", agentID, err)
	}
	if sc.Revoked {
		return nil, fmt.Errorf("agent %d was revoked", agentID)
	}
	out := make(map[string]admission, len(paths))
	var refused []string
	var why error
	for _, p := range paths {
		a, err := admitPath(sc, infos[p])
		if err != nil {
			refused = append(refused, p)
			why = cmp.Or(why, err)
			continue
		}
		out[p] = a
	}
	if len(refused) == 0 {
		return out, nil
	}
	more := ""
	if len(refused) > 1 {
		more = fmt.Sprintf(" (and %d more of the %d paths it would send)", len(refused)-1, len(paths))
	}
	hint := ""
	if errors.Is(why, errNotInScope) {
		hint = fmt.Sprintf("; anything else needs the push permission, which an admin grants with PUT /api/v1/agents/%d {\"push\": true}", agentID)
	}
	return nil, fmt.Errorf("agent %d may not upload %s%s: %w%s", agentID, refused[0], more, why, hint)
}

// errNotInScope is a path outside everything the agent may upload.
var errNotInScope = errors.New("it is not an output of a step leased to this agent")

func admitPath(sc storage.UploadScope, pi protocol.PathInfo) (admission, error) {
	var declared *contentAddress
	if pi.CA != "" {
		ca, err := parseCA(pi.CA)
		if err != nil {
			return admission{}, err
		}
		if err := checkCAPath(pi.StorePath, ca, pi.References); err != nil {
			return admission{}, err
		}
		declared = &ca
	}
	if o, ok := sc.Outputs[pi.StorePath]; ok {
		a := admission{pendingStep: o.StepID}
		if o.CA == "" {
			if declared != nil {
				return admission{}, fmt.Errorf("it declares content address %s, but step %d's derivation declares an input-addressed output", declared, o.StepID)
			}
			return a, nil
		}
		want, err := parseCA(o.CA)
		if err != nil {
			return admission{}, fmt.Errorf("step %d's output: %w", o.StepID, err)
		}
		if declared != nil && declared.String() != want.String() {
			return admission{}, fmt.Errorf("it declares content address %s, but step %d's derivation declares %s", declared, o.StepID, want)
		}
		if err := checkCAPath(pi.StorePath, want, pi.References); err != nil {
			return admission{}, err
		}
		a.ca = &want
		return a, nil
	}
	switch {
	case sc.Push:
		return admission{push: true, ca: declared}, nil
	case sc.Evaluating && declared != nil:
		return admission{ca: declared}, nil
	case sc.Evaluating:
		return admission{}, fmt.Errorf("%w, and an evaluation may upload only content-addressed paths (.drv files, sources)", errNotInScope)
	}
	return admission{}, errNotInScope
}
