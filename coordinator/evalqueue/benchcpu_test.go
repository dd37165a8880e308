package evalqueue_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// cpuSplit is CPU time, in seconds, by who spent it: this process (the coordinator
// and the in-process agent's Go code), its children that ended (the evaluator's nix
// processes, git), and PostgreSQL (the server this test binary started, its exited
// backends included).
type cpuSplit struct {
	goUser, goSys, nixUser, nixSys, pgUser, pgSys float64
}

func (a cpuSplit) sub(b cpuSplit) cpuSplit {
	return cpuSplit{a.goUser - b.goUser, a.goSys - b.goSys, a.nixUser - b.nixUser, a.nixSys - b.nixSys,
		a.pgUser - b.pgUser, a.pgSys - b.pgSys}
}

func (a cpuSplit) String() string {
	return fmt.Sprintf("evaluator (nix, git) %.2f user + %.2f sys; coordinator+agent Go %.2f user + %.2f sys; PostgreSQL %.2f user + %.2f sys",
		a.nixUser, a.nixSys, a.goUser, a.goSys, a.pgUser, a.pgSys)
}

func cpuNow() cpuSplit {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	s := cpuSplit{goUser: tv(self.Utime), goSys: tv(self.Stime), nixUser: tv(kids.Utime), nixSys: tv(kids.Stime)}
	s.pgUser, s.pgSys = postgresCPU()
	return s
}

// procStat is the part of /proc/PID/stat used here.
type procStat struct {
	comm                        string
	ppid                        int
	utime, stime, cutime, cstim float64 // seconds
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, false
	}
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return procStat{}, false
	}
	f := strings.Fields(string(b[closing+1:])) // f[0] is field 3 (state)
	if len(f) < 15 {
		return procStat{}, false
	}
	num := func(i int) float64 { v, _ := strconv.ParseFloat(f[i], 64); return v / 100 } // USER_HZ
	ppid, _ := strconv.Atoi(f[1])
	return procStat{comm: string(b[open+1 : closing]), ppid: ppid, utime: num(11), stime: num(12), cutime: num(13), cstim: num(14)}, true
}

// postgresCPU sums the postgres processes below this one.
func postgresCPU() (user, sys float64) {
	entries, _ := os.ReadDir("/proc")
	stats := map[int]procStat{}
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if st, ok := readStat(pid); ok {
				stats[pid] = st
			}
		}
	}
	self := os.Getpid()
	below := func(pid int) bool {
		for i := 0; i < 64 && pid > 1; i++ {
			if pid == self {
				return true
			}
			pid = stats[pid].ppid
		}
		return false
	}
	for pid, st := range stats {
		if st.comm == "postgres" && below(pid) {
			user += st.utime + st.cutime
			sys += st.stime + st.cstim
		}
	}
	return user, sys
}

// storeEntries counts the entries of a store directory (-1: unreadable).
func storeEntries(dir string) int {
	e, err := os.ReadDir(dir)
	if err != nil {
		return -1
	}
	return len(e)
}
