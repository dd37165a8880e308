package buildapi

import (
	"testing"

	"github.com/fc-ci/fc/storage"
)

func TestAbortReason_NamesTheAttemptsAndTheLastErrorOfTheBuildsOwnStep(t *testing.T) {
	t.Parallel()
	own := storage.StepInfo{DrvPath: "/nix/store/own.drv", Status: "aborted", Attempts: 3,
		Error: "nix-store --realise exited with 1 (after 3 attempts)"}
	other := storage.StepInfo{DrvPath: "/nix/store/dep.drv", Status: "aborted", Attempts: 2, Error: "the agent was lost"}
	for _, c := range []struct {
		name, status string
		steps        []storage.StepInfo
		want         string
	}{
		{"own step", "aborted", []storage.StepInfo{other, own},
			"aborted after 3 attempt(s) failed for reasons of the infrastructure; last error: nix-store --realise exited with 1 (after 3 attempts)"},
		{"only a dependency aborted", "aborted", []storage.StepInfo{other},
			"aborted after 2 attempt(s) failed for reasons of the infrastructure; last error: the agent was lost"},
		{"no error recorded", "aborted", []storage.StepInfo{{DrvPath: "/nix/store/own.drv", Status: "aborted", Attempts: 1}},
			"aborted after 1 attempt(s) failed for reasons of the infrastructure; last error: no error was reported"},
		{"no aborted step", "aborted", nil, "aborted"},
		{"not aborted", "failed", []storage.StepInfo{own}, ""},
	} {
		if got := abortReason(c.status, "/nix/store/own.drv", c.steps); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
