package agentinstall

import (
	"bytes"
	"context"
	"fmt"
	"time"
)

// pollEvery is how often the installer looks at the agent's record while it waits.
const pollEvery = 300 * time.Millisecond

// stage writes the unit and the binary under the root and starts nothing.
func (in *installation) stage(ctx context.Context, newBin string) error {
	p := in.res.Paths
	if err := in.r.writeFile(ctx, p.Unit, 0o644, bytes.NewReader(unitFile(p))); err != nil {
		return err
	}
	if err := in.replaceBinary(ctx, newBin); err != nil {
		return err
	}
	in.res.Staged = true
	fmt.Fprintf(in.o.Out, "wrote %s\nstaged under %s: nothing was enabled or started (--root); to run it on the host: systemctl link %s && systemctl enable --now %s\n",
		p.Unit, in.o.Root, p.Unit, UnitName)
	return nil
}

// startService installs the unit and (re)starts it.
func (in *installation) startService(ctx context.Context, newBin string) error {
	p := in.res.Paths
	if err := in.r.writeFile(ctx, p.Unit, 0o644, bytes.NewReader(unitFile(p))); err != nil {
		return err
	}
	fmt.Fprintf(in.o.Out, "wrote %s\n", p.Unit)
	if in.res.Upgraded {
		fmt.Fprintln(in.o.Out, "stopping the running agent: it finishes its running work first")
	}
	// An agent an earlier --no-service install started would run beside the unit's
	// with the same key.
	if err := in.stopDetached(ctx); err != nil {
		return err
	}
	if _, err := in.r.run(ctx, "systemctl stop "+UnitName+" 2>/dev/null || true", nil); err != nil {
		return fmt.Errorf("stop the running agent: %w", err)
	}
	in.waitDisconnected(ctx)
	if err := in.replaceBinary(ctx, newBin); err != nil {
		return err
	}
	if _, err := in.r.run(ctx, "set -e; systemctl daemon-reload; systemctl enable "+UnitName+"; systemctl restart "+UnitName, nil); err != nil {
		return fmt.Errorf("start %s: %w", UnitName, err)
	}
	fmt.Fprintf(in.o.Out, "enabled and started %s\n", UnitName)
	return in.waitConnected(ctx, "systemctl is-active --quiet "+UnitName, "journalctl -u "+UnitName+" -n 30 --no-pager")
}

// startDetached stops an agent it started before and starts the new one in a
// session of its own.
func (in *installation) startDetached(ctx context.Context, newBin string) error {
	p := in.res.Paths
	if in.res.Upgraded {
		fmt.Fprintln(in.o.Out, "stopping the running agent, if any: it finishes its running work first")
	}
	// The unit an earlier install without --no-service enabled would run an agent
	// beside this one with the same key.
	disabled, err := in.r.output(ctx, fmt.Sprintf(`if [ -f %s ] && [ -d /run/systemd/system ] && systemctl is-enabled --quiet %s 2>/dev/null; then systemctl disable --now %s >/dev/null 2>&1 && echo disabled; fi`,
		shQuote(p.Unit), UnitName, UnitName))
	if err != nil {
		return fmt.Errorf("disable %s: %w", UnitName, err)
	}
	if disabled != "" {
		fmt.Fprintf(in.o.Out, "disabled and stopped %s (the agent runs detached now)\n", UnitName)
	}
	if err := in.stopDetached(ctx); err != nil {
		return err
	}
	in.waitDisconnected(ctx)
	if err := in.replaceBinary(ctx, newBin); err != nil {
		return err
	}
	out, err := in.r.output(ctx, startDetached(p))
	if err != nil {
		return fmt.Errorf("start the agent: %w", err)
	}
	in.res.PID = pid(out)
	if in.res.PID == 0 {
		return fmt.Errorf("start the agent: no PID (%q)", out)
	}
	fmt.Fprintf(in.o.Out, "started the agent detached: PID %d (in %s), log %s\n", in.res.PID, p.PIDFile, p.LogFile)
	alive := fmt.Sprintf("[ -d /proc/%d ] && ! grep -q '^State:.*Z' /proc/%d/status", in.res.PID, in.res.PID)
	if err := in.waitConnected(ctx, alive, "tail -n 30 "+shQuote(p.LogFile)); err != nil {
		return err
	}
	fmt.Fprint(in.o.Out, permanentHint(p))
	return nil
}

// stopDetached stops the agent the PID file names, if it runs.
func (in *installation) stopDetached(ctx context.Context) error {
	stopped, err := in.r.output(ctx, stopDetached(in.res.Paths, int(in.o.DrainTimeout/time.Second)))
	if err != nil {
		return fmt.Errorf("stop the running agent: %w", err)
	}
	if stopped != "" {
		fmt.Fprintf(in.o.Out, "stopped the agent that ran detached as PID %s\n", stopped)
	}
	return nil
}

// replaceBinary moves the uploaded binary over the installed one.
func (in *installation) replaceBinary(ctx context.Context, newBin string) error {
	if _, err := in.r.run(ctx, "mv -f "+shQuote(newBin)+" "+shQuote(in.res.Paths.Binary), nil); err != nil {
		return fmt.Errorf("install %s: %w", in.res.Paths.Binary, err)
	}
	return nil
}

// waitDisconnected gives the coordinator a moment to notice that the agent it had
// stopped, so the wait for the new one's connection does not see the old one's.
func (in *installation) waitDisconnected(ctx context.Context) {
	if !in.res.Upgraded {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		a, err := in.db.GetAgent(ctx, in.res.AgentID)
		if err != nil || !a.Connected {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pollEvery):
		}
	}
	fmt.Fprintln(in.o.Out, "the coordinator still counts the stopped agent as connected after 30 s; continuing")
}

// waitConnected waits until the coordinator has a session of the agent. alive is a
// host command that fails once the agent is gone; diag prints its recent log.
func (in *installation) waitConnected(ctx context.Context, alive, diag string) error {
	ctx, cancel := context.WithTimeout(ctx, in.o.Timeout)
	defer cancel()
	lastCheck := time.Now()
	for {
		a, err := in.db.GetAgent(ctx, in.res.AgentID)
		if err == nil && a.Connected {
			fmt.Fprintf(in.o.Out, "agent %s (id %d) is connected: fc-agent %s, %s\n", a.Name, a.ID, a.AgentVersion, a.NixVersion)
			return nil
		}
		if time.Since(lastCheck) > 2*time.Second {
			lastCheck = time.Now()
			if _, err := in.r.run(ctx, alive, nil); err != nil && ctx.Err() == nil {
				return fmt.Errorf("the agent stopped before it connected; its log:\n%s", in.log(diag))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent did not connect within %v (it keeps running and trying: check that the host reaches %s); its log:\n%s",
				in.o.Timeout, in.o.CoordinatorURL, in.log(diag))
		case <-time.After(pollEvery):
		}
	}
}

// log runs diag on the host with a context of its own (the caller's may be done).
func (in *installation) log(diag string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := in.r.output(ctx, diag)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", diag, err)
	}
	return out
}
