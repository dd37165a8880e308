package storage_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// BenchmarkFinishEvaluation10k stores an evaluation of 10,000 new independent jobs
// (10,000 steps and builds, an output each): the coordinator's part of issue 5's
// trigger-to-graph benchmark, alone. Every iteration has new derivations.
func BenchmarkFinishEvaluation10k(b *testing.B) {
	ctx := context.Background()
	db := storagetest.New(b)
	js := jobsetFixture(b, db, "bench")
	agent := agentFixture(b, db, "bench")
	const n = 10000
	var total time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		l := claimEval(b, db, js.ID, agent)
		var o storage.EvalOutcome
		for k := range n {
			name := fmt.Sprintf("j%d-%d", i, k)
			outs := map[string]string{"out": out(name)}
			o.Jobs = append(o.Jobs, storage.EvalJob{Attr: name, Name: name, DrvPath: drv(name), System: "x86_64-linux", Outputs: outs})
			o.Nodes = append(o.Nodes, storage.EvalNode{DrvPath: drv(name), System: "x86_64-linux", Outputs: outs})
		}
		b.StartTimer()
		start := time.Now()
		if err := db.FinishEvaluation(ctx, l, o); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/evaluation")
}

// BenchmarkFinishEvaluation10kReused stores a re-evaluation of 10,000 unchanged jobs:
// every job joins as its earlier build (Hydra's reuse), nothing new is built.
func BenchmarkFinishEvaluation10kReused(b *testing.B) {
	ctx := context.Background()
	db := storagetest.New(b)
	js := jobsetFixture(b, db, "bench")
	agent := agentFixture(b, db, "bench")
	const n = 10000
	var o storage.EvalOutcome
	for k := range n {
		name := fmt.Sprintf("j%d", k)
		outs := map[string]string{"out": out(name)}
		o.Jobs = append(o.Jobs, storage.EvalJob{Attr: name, Name: name, DrvPath: drv(name), System: "x86_64-linux", Outputs: outs})
		o.Nodes = append(o.Nodes, storage.EvalNode{DrvPath: drv(name), System: "x86_64-linux", Outputs: outs})
	}
	if err := db.FinishEvaluation(ctx, claimEval(b, db, js.ID, agent), o); err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		l := claimEval(b, db, js.ID, agent)
		b.StartTimer()
		start := time.Now()
		if err := db.FinishEvaluation(ctx, l, o); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/evaluation")
}
