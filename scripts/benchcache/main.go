// Command benchcache runs fc-coordinator or fc-agent exactly as their binaries do
// (the same cli.Run), with profiling hooks for scripts/bench-cache PROFILE=1:
//
//	benchcache coordinator serve        like fc-coordinator serve
//	benchcache agent push PATH...       like fc-agent push PATH...
//
// BENCH_CPUPROFILE=FILE writes a CPU profile of the whole run to FILE, sampled
// BENCH_PROFILE_HZ times a second (default 200, twice Go's usual rate so that a
// sub-second push gets some samples; rates above the kernel's tick rate lose samples).
// BENCH_PPROF=127.0.0.1:PORT serves net/http/pprof there while it runs, to profile
// one phase (curl .../debug/pprof/profile?seconds=N).
package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"

	agentcli "github.com/fc-ci/fc/agent/cli"
	coordcli "github.com/fc-ci/fc/coordinator/cli"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "coordinator" && os.Args[1] != "agent") {
		fmt.Fprintln(os.Stderr, "usage: benchcache coordinator|agent ARGS...")
		os.Exit(2)
	}
	which := os.Args[1]
	os.Args = append(os.Args[:1], os.Args[2:]...)

	if addr := os.Getenv("BENCH_PPROF"); addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchcache: pprof listener:", err)
			os.Exit(1)
		}
		go func() { _ = http.Serve(ln, http.DefaultServeMux) }()
	}
	stop := func() {}
	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" {
		hz := 200
		if v, err := strconv.Atoi(os.Getenv("BENCH_PROFILE_HZ")); err == nil && v > 0 {
			hz = v
		}
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchcache:", err)
			os.Exit(1)
		}
		// Setting the rate first makes StartCPUProfile warn that it is already set;
		// the rate set here is the one used.
		runtime.SetCPUProfileRate(hz)
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "benchcache: profile:", err)
		}
		stop = func() { pprof.StopCPUProfile(); f.Close() }
	}
	var code int
	if which == "coordinator" {
		code = coordcli.Run()
	} else {
		code = agentcli.Run()
	}
	stop()
	os.Exit(code)
}
