// The nix-store --realise process of a batch: its command line, starting it in a
// process group of its own with the log on a pipe, stopping it, and the run of a
// batch from start to results.

package realise

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Args is the nix-store command line realising reqs (without the program name):
// the process-wide options are the first request's.
func Args(maxJobs int, reqs ...Request) []string {
	req := reqs[0]
	subs := make([]string, 0, 1+len(req.Substituters))
	if req.CacheURL != "" {
		subs = append(subs, req.CacheURL)
	}
	subs = append(subs, req.Substituters...)
	args := []string{"--log-format", "internal-json", "--realise"}
	for _, r := range reqs {
		args = append(args, r.DrvPath)
	}
	args = append(args,
		"--option", "substituters", strings.Join(subs, " "),
		"--option", "narinfo-cache-negative-ttl", "0",
		// The agent is the builder: never hand a step to nix.conf's remote builders.
		"--option", "builders", "",
		"--max-jobs", strconv.Itoa(max(maxJobs, 1)),
		"--keep-going",
	)
	if req.NetrcFile != "" {
		args = append(args, "--option", "netrc-file", req.NetrcFile)
	}
	if len(req.TrustedKeys) > 0 {
		args = append(args, "--option", "trusted-public-keys", strings.Join(req.TrustedKeys, " "))
	}
	if len(req.Features) > 0 {
		args = append(args, "--option", "system-features", strings.Join(req.Features, " "))
	}
	if req.Timeout > 0 {
		args = append(args, "--timeout", strconv.FormatInt(int64(max(req.Timeout/time.Second, 1)), 10))
	}
	if req.MaxSilent > 0 {
		args = append(args, "--option", "max-silent-time", strconv.FormatInt(int64(max(req.MaxSilent/time.Second, 1)), 10))
	}
	return args
}

// runBatch realises jobs in one nix-store process and finishes every job.
func runBatch(jobs []*job, maxJobs int) {
	jobs = prepare(context.Background(), jobs)
	if len(jobs) > 0 {
		runProcess(jobs, maxJobs)
	}
}

// watchJobs gives prepared jobs their log writers and returns a channel closed when
// the batch must stop (a job cancelled or over its log limit) and the end of the
// watches.
func watchJobs(jobs []*job) (stop chan struct{}, unwatch func()) {
	stop = make(chan struct{})
	var stopOnce sync.Once
	stopBatch := func() { stopOnce.Do(func() { close(stop) }) }
	for _, j := range jobs {
		j.lw = newLimitWriter(j.req.Log, j.req.MaxLogSize)
		j.lw.onStop = stopBatch
		j.stopWatch = context.AfterFunc(j.ctx, stopBatch)
	}
	return stop, func() {
		for _, j := range jobs {
			j.stopWatch()
		}
	}
}

// unhanded is the jobs not handed on early.
func unhanded(jobs []*job) []*job {
	rest := jobs[:0:0]
	for _, j := range jobs {
		if !j.handed {
			rest = append(rest, j)
		}
	}
	return rest
}

// runProcess realises prepared jobs in one nix-store process.
func runProcess(jobs []*job, maxJobs int) {
	bctx := context.Background()
	cmd, pr, err := startNix(jobs, maxJobs)
	if err != nil {
		failAll(jobs, Result{}, err)
		return
	}
	defer pr.Close()

	stop, unwatch := watchJobs(jobs)
	defer unwatch()
	d := newDemux(jobs)
	// Derivations finish one by one while the batch runs: each is handed on as soon
	// as Nix is done with it, so its step uploads and reports without waiting for the
	// slowest build of the batch.
	stopEarly := startEarly(bctx, jobs, d, processQueries())
	parsed := make(chan []string, 1)
	go func() { parsed <- d.parse(pr) }()

	waitErr := waitNix(cmd, stop)

	var general []string
	select {
	case general = <-parsed:
	case <-time.After(drainGrace):
		_ = pr.SetReadDeadline(time.Now())
		general = <-parsed
	}
	stopEarly()
	jobs = unhanded(jobs)
	wasStopped := closed(stop)
	code := cmd.ProcessState.ExitCode()
	classify(bctx, jobs, code, wasStopped, general, waitErr)
}

// startNix starts nix-store --realise for jobs, its log (stderr) going to the pipe
// whose read end it returns. Errors wrap ErrInfrastructure.
func startNix(jobs []*job, maxJobs int) (*exec.Cmd, *os.File, error) {
	reqs := make([]Request, len(jobs))
	for i, j := range jobs {
		reqs[i] = j.req
	}
	cmd := exec.Command("nix-store", Args(maxJobs, reqs...)...)
	cmd.Env = os.Environ()
	if home := jobs[0].req.CacheHome; home != "" {
		// The batch's Nix uses the first request's cache directory (only it is made:
		// each costs file system work, which adds up over thousands of steps).
		if err := os.MkdirAll(home, 0o700); err != nil {
			return nil, nil, fmt.Errorf("%w: create the Nix cache directory: %w", ErrInfrastructure, err)
		}
		cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+home)
	}
	// Its own process group, so stopping it reaches every process Nix started; and
	// SIGINT if the agent dies (even by SIGKILL), so Nix stops its builders rather
	// than finishing steps nobody will report. (Pdeathsig follows the forking thread;
	// Go ends threads only behind LockOSThread, which the agent does not use.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGINT}
	// Our own pipe rather than an io.Writer: exec would wait for a copy goroutine that
	// a grandchild holding the pipe could keep open forever.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: create the log pipe: %w", ErrInfrastructure, err)
	}
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return nil, nil, fmt.Errorf("%w: start nix-store: %w", ErrInfrastructure, err)
	}
	pw.Close()
	return cmd, pr, nil
}

// waitNix waits for nix-store to exit, stopping its process group (see stopGroup)
// if stop closes first.
func waitNix(cmd *exec.Cmd, stop <-chan struct{}) error {
	exited := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-exited:
			return
		case <-stop:
		}
		stopGroup(cmd.Process.Pid, exited)
	}()
	err := cmd.Wait()
	close(exited)
	<-stopped
	return err
}

// stopGroup asks Nix to stop (SIGINT: it kills its builders, which run in sessions of
// their own that a signal to Nix's group does not reach), then kills the group if Nix
// has not exited within stopGrace.
func stopGroup(pid int, exited <-chan struct{}) {
	_ = syscall.Kill(-pid, syscall.SIGINT)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}
