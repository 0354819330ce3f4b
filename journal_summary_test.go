package rereadyverify

import (
	"testing"
	"time"
)

func TestJournalSummary(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 30, 45, 0, time.UTC)
	j := newJournal(100)
	add := func(ago time.Duration, outcome string, reason Reason, verified string) {
		j.add(journalEntry{at: now.Add(-ago), outcome: outcome, reason: reason, verified: verified})
	}
	add(61*time.Minute, OutcomeForwarded, "", "hmac") // before the first minute
	add(59*time.Minute+45*time.Second, OutcomeForwarded, "", "hmac")
	add(30*time.Minute, OutcomeRejected, ReasonSignatureMismatch, "")
	add(29*time.Minute, OutcomeRejected, ReasonPayloadInvalidJSON, "hmac") // signed, then refused
	add(30*time.Minute, OutcomeObserved, ReasonSignatureMismatch, "none")
	add(2*time.Minute, OutcomeQueued, ReasonUpstreamFailed, "hmac")
	add(2*time.Minute, OutcomeQueued, ReasonHeld, "token")
	add(time.Minute, OutcomeRetrying, ReasonRedeliveryFailed, "hmac") // an attempt, not an arrival
	add(time.Minute, OutcomeDead, ReasonMaxAge, "hmac")
	add(30*time.Second, OutcomeRedelivered, "", "hmac")
	add(10*time.Second, OutcomeReplayed, ReasonReplayDelivered, "hmac")
	add(5*time.Second, OutcomeForwarded, "", "hmac,token")
	add(-time.Minute, OutcomeForwarded, "", "hmac") // in the future: ignored

	s := j.summary(now)
	if s.From != "2026-11-29T11:31:00Z" || s.To != "2026-11-29T12:30:45Z" {
		t.Errorf("window %s to %s", s.From, s.To)
	}
	if len(s.Minutes) != 60 || s.Minutes[0].Start != s.From || s.Minutes[59].Start != "2026-11-29T12:30:00Z" {
		t.Fatalf("minutes: %d, first %+v", len(s.Minutes), s.Minutes[0])
	}
	// verified: the first forwarded, two queued arrivals, replayed, the last
	// forwarded; not the observed one, nor redelivery attempts.
	if s.Verified != 5 || s.Rejected != 2 || s.Queued != 2 || s.Dead != 1 || s.Partial {
		t.Errorf("counters %+v; want verified 5, rejected 2, queued 2, dead 1, not partial", s)
	}
	want := map[int]map[string]int{
		0:  {OutcomeForwarded: 1},
		29: {OutcomeRejected: 1, OutcomeObserved: 1},
		30: {OutcomeRejected: 1},
		57: {OutcomeQueued: 2}, // 12:28:45
		58: {OutcomeRetrying: 1, OutcomeDead: 1},
		59: {OutcomeRedelivered: 1, OutcomeReplayed: 1, OutcomeForwarded: 1},
	}
	for i, m := range s.Minutes {
		w := want[i]
		if len(m.Counts) != len(w) {
			t.Errorf("minute %d (%s): %v, want %v", i, m.Start, m.Counts, w)
			continue
		}
		for k, n := range w {
			if m.Counts[k] != n {
				t.Errorf("minute %d (%s): %v, want %v", i, m.Start, m.Counts, w)
			}
		}
	}
}

// A journal that dropped entries from within the hour says so.
func TestJournalSummaryPartial(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 30, 0, 0, time.UTC)
	j := newJournal(3)
	for i := 5; i > 0; i-- {
		j.add(journalEntry{at: now.Add(-time.Duration(i) * time.Minute), outcome: OutcomeRejected})
	}
	if s := j.summary(now); !s.Partial || s.Rejected != 3 {
		t.Errorf("partial %v, rejected %d; want true, 3", s.Partial, s.Rejected)
	}
	j = newJournal(3)
	for i := 5; i > 0; i-- {
		j.add(journalEntry{at: now.Add(-time.Duration(i) * 2 * time.Hour), outcome: OutcomeRejected})
	}
	if s := j.summary(now); s.Partial || s.Rejected != 0 {
		t.Errorf("partial %v, rejected %d; want false, 0 (everything dropped is older than the hour)", s.Partial, s.Rejected)
	}
}
