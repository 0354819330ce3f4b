package rereadyverify

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// These helpers do what prometheus/testutil's ToFloat64, CollectAndCount
// and GatherAndCount do; testutil itself would need a go.mod entry for its
// diff dependency (github.com/kylelemons/godebug).

// toFloat64 returns the value of a collector holding one counter or gauge.
func toFloat64(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	var ms []prometheus.Metric
	for m := range ch {
		ms = append(ms, m)
	}
	if len(ms) != 1 {
		t.Fatalf("collected %d metrics, want 1", len(ms))
	}
	var pb dto.Metric
	if err := ms[0].Write(&pb); err != nil {
		t.Fatal(err)
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	case pb.Untyped != nil:
		return pb.Untyped.GetValue()
	}
	t.Fatalf("metric %v is not a counter or gauge", ms[0].Desc())
	return 0
}

// collectAndCount returns the number of series c exports.
func collectAndCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	n := 0
	for range ch {
		n++
	}
	return n
}

// gatherAndCount returns the number of series reg exports under name.
func gatherAndCount(t testing.TB, reg prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

func mustRegisterMetrics(t testing.TB, reg prometheus.Registerer) *metrics {
	t.Helper()
	m, err := registerMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// histogramCount returns the sample count of the duration histogram as reg
// exports it.
func histogramCount(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "caddy_reready_verify_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("duration histogram not exported")
	return 0
}

func TestMetricsRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := mustRegisterMetrics(t, reg)
	b := mustRegisterMetrics(t, reg) // a config reload
	if a.requests != b.requests || a.events != b.events || a.duration != b.duration {
		t.Fatal("re-registration gave different collectors")
	}
	// Another config's registry gets the same process-wide collectors.
	c := mustRegisterMetrics(t, prometheus.NewRegistry())
	if c.requests != a.requests {
		t.Fatal("a second registry got different collectors")
	}
	for _, name := range []string{
		"caddy_reready_requests_total",
		"caddy_reready_events_total",
		"caddy_reready_verify_duration_seconds",
		"caddy_reready_replay_entries",
		"caddy_reready_replay_evictions_total",
	} {
		if n := gatherAndCount(t, reg, name); n == 0 {
			t.Errorf("%s: not exported", name)
		}
	}
}

func TestMetricsObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := mustRegisterMetrics(t, reg)
	tests := []struct {
		outcome, reason string
	}{
		{outcomeVerified, ""},
		{outcomeRejected, string(ReasonSignatureMismatch)},
		{outcomeRejected, string(ReasonTimestampStale)},
		{outcomeReplayed, string(ReasonReplayDelivered)},
		{outcomeReplayed, string(ReasonReplayInFlight)},
		{outcomeObserved, string(ReasonTokenMissing)},
		{outcomeRejected, "some_future_reason"},
	}
	for _, tc := range tests {
		t.Run(tc.outcome+"/"+tc.reason, func(t *testing.T) {
			c := m.requests.WithLabelValues(tc.outcome, tc.reason)
			before, hist := toFloat64(t, c), histogramCount(t, reg)
			m.observe(tc.outcome, tc.reason, 3*time.Millisecond)
			m.observe(tc.outcome, tc.reason, time.Millisecond) // cached now
			if got := toFloat64(t, c) - before; got != 2 {
				t.Errorf("requests{%s,%s} moved by %v, want 2", tc.outcome, tc.reason, got)
			}
			if got := histogramCount(t, reg) - hist; got != 2 {
				t.Errorf("duration samples moved by %d, want 2", got)
			}
		})
	}
}

func TestMetricsEvent(t *testing.T) {
	m := mustRegisterMetrics(t, prometheus.NewRegistry())
	tests := []struct {
		state     string
		test      bool
		wantState string
	}{
		{verify.StateComplete, false, verify.StateComplete},
		{verify.StatePendingReturnShipment, true, verify.StatePendingReturnShipment},
		{"exploded", false, stateUnknown},
		{"", true, stateUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.state, func(t *testing.T) {
			c := m.events.WithLabelValues(tc.wantState, map[bool]string{true: "true", false: "false"}[tc.test])
			before := toFloat64(t, c)
			m.event(tc.state, tc.test)
			if got := toFloat64(t, c) - before; got != 1 {
				t.Errorf("events{%s,%v} moved by %v, want 1", tc.wantState, tc.test, got)
			}
		})
	}
	// Every documented state and unknown, each with test true and false;
	// undocumented states never add series.
	if n := collectAndCount(m.events); n != 2*(len(verify.States)+1) {
		t.Fatalf("events series = %d, want %d", n, 2*(len(verify.States)+1))
	}
}

// TestMetricsExistingCollector: a registry that already exports an
// identical collector keeps it, and observations show there; a conflicting
// one is an error.
func TestMetricsExistingCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	mine := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_reready_requests_total",
		Help: "Requests seen by reready_verify, by outcome (verified, rejected, replayed, observed) and reason code.",
	}, []string{"outcome", "reason"})
	reg.MustRegister(mine)
	m := mustRegisterMetrics(t, reg)
	if m.requests != mine {
		t.Fatal("the registry's existing collector was not used")
	}
	m.observe(outcomeVerified, "", time.Millisecond)
	m.observe(outcomeRejected, string(ReasonMethod), time.Millisecond)
	if got := toFloat64(t, mine.WithLabelValues(outcomeVerified, "")); got != 1 {
		t.Fatalf("existing collector verified = %v, want 1", got)
	}
	if got := toFloat64(t, mine.WithLabelValues(outcomeRejected, string(ReasonMethod))); got != 1 {
		t.Fatalf("existing collector rejected = %v, want 1", got)
	}

	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_reready_events_total", Help: "something else",
	}, []string{"state"}))
	if _, err := registerMetrics(bad); err == nil || !strings.Contains(err.Error(), "reready_verify metrics") {
		t.Fatalf("conflicting registration: error = %v", err)
	}
}

func TestMetricsNil(t *testing.T) {
	var m *metrics
	m.observe(outcomeVerified, "", time.Millisecond) // no panic
	m.event(verify.StateComplete, false)

	for _, reg := range []prometheus.Registerer{nil, (*prometheus.Registry)(nil)} {
		m, err := registerMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		before := toFloat64(t, m.verified)
		m.observe(outcomeVerified, "", time.Millisecond)
		if toFloat64(t, m.verified) != before+1 {
			t.Fatal("an unregistered recorder does not count")
		}
	}
}

func TestMetricsReplayGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	mustRegisterMetrics(t, reg)
	store, release := loadMemoryReplay(2, 0, nil)
	defer release()
	ctx := context.Background()
	for i := range 3 {
		_, c, _ := store.Begin(ctx, testKey(i), replayT0)
		store.Commit(ctx, c, replayT0, time.Hour)
	}
	if got := toFloat64(t, processMetrics.entries); got != 2 {
		t.Fatalf("replay_entries = %v, want 2", got)
	}
	if got := toFloat64(t, processMetrics.evictions); got != 1 {
		t.Fatalf("replay_evictions_total = %v, want 1", got)
	}
}

func TestMetricsVerifiedPathAllocs(t *testing.T) {
	m := mustRegisterMetrics(t, prometheus.NewRegistry())
	m.observe(outcomeRejected, string(ReasonSignatureMismatch), 0) // warm the cache
	allocs := testing.AllocsPerRun(1000, func() {
		m.observe(outcomeVerified, "", time.Millisecond)
		m.event(verify.StateComplete, false)
		m.event("exploded", true)
		m.observe(outcomeRejected, string(ReasonSignatureMismatch), time.Millisecond)
	})
	if allocs != 0 {
		t.Fatalf("observe/event allocate %v times per call", allocs)
	}
}

func BenchmarkMetricsObserve(b *testing.B) {
	m := mustRegisterMetrics(b, prometheus.NewRegistry())
	b.Run("verified", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.observe(outcomeVerified, "", time.Millisecond)
			m.event(verify.StateComplete, false)
		}
	})
	b.Run("rejected", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.observe(outcomeRejected, string(ReasonSignatureMismatch), time.Millisecond)
		}
	})
}
