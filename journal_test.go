package rereadyverify

import (
	"fmt"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

func TestJournalRingAndQuery(t *testing.T) {
	j := newJournal(5)
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for i := 1; i <= 7; i++ {
		outcome := OutcomeForwarded
		if i%2 == 0 {
			outcome = OutcomeRejected
		}
		j.add(journalEntry{at: t0.Add(time.Duration(i) * time.Second), outcome: outcome,
			returnID: rid(fmt.Sprintf("r%d", i%3)), state: verify.StateComplete, status: 200 + i})
	}
	all := j.query(DeliveryFilter{})
	if len(all) != 5 {
		t.Fatalf("%d entries kept, want 5", len(all))
	}
	for i, d := range all {
		if want := uint64(7 - i); d.Seq != want {
			t.Errorf("entry %d has seq %d, want %d (newest first)", i, d.Seq, want)
		}
	}
	if all[0].Time != "2026-11-29T12:00:07Z" {
		t.Errorf("time = %q, want RFC 3339 UTC", all[0].Time)
	}
	tests := []struct {
		name string
		f    DeliveryFilter
		want []uint64
	}{
		{"outcome", DeliveryFilter{Outcome: OutcomeRejected}, []uint64{6, 4}},
		{"return id", DeliveryFilter{ReturnID: "r1"}, []uint64{7, 4}},
		{"state none", DeliveryFilter{State: verify.StateFailed}, nil},
		{"limit", DeliveryFilter{Limit: 2}, []uint64{7, 6}},
		{"after", DeliveryFilter{After: 5}, []uint64{7, 6}},
		{"after and filter", DeliveryFilter{After: 3, Outcome: OutcomeForwarded}, []uint64{7, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := j.query(tc.f)
			var seqs []uint64
			for _, d := range got {
				seqs = append(seqs, d.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tc.want) {
				t.Fatalf("seqs %v, want %v", seqs, tc.want)
			}
		})
	}

	// Shrinking keeps the newest; growing keeps them all and the sequence.
	j.resize(2)
	if got := j.query(DeliveryFilter{}); len(got) != 2 || got[0].Seq != 7 || got[1].Seq != 6 {
		t.Fatalf("after shrinking: %+v", got)
	}
	j.resize(10)
	j.add(journalEntry{outcome: OutcomeQueued})
	if got := j.query(DeliveryFilter{}); len(got) != 3 || got[0].Seq != 8 || got[2].Seq != 6 {
		t.Fatalf("after growing: %+v", got)
	}
	if j.last() != 8 {
		t.Fatalf("last = %d, want 8", j.last())
	}
}

func TestJournalDeliveryIDShown(t *testing.T) {
	j := newJournal(3)
	id := randomDeliveryID(1744831201)
	j.add(journalEntry{id: id})
	j.add(journalEntry{})
	got := j.query(DeliveryFilter{})
	if got[0].DeliveryID != "" || got[1].DeliveryID != id.String() {
		t.Fatalf("delivery ids %q, %q; want \"\", %q", got[0].DeliveryID, got[1].DeliveryID, id)
	}
}

// rid is a journal entry's return id, for entries built by tests.
func rid(s string) ownedString {
	var o ownedString
	o.set(s)
	return o
}

func TestJournalFilterTest(t *testing.T) {
	j := newJournal(10)
	for i, test := range []bool{false, true, false, true} {
		j.add(journalEntry{outcome: OutcomeForwarded, returnID: rid(fmt.Sprint("r", i)), state: verify.StateComplete, status: 202, test: test})
	}
	yes, no := true, false
	tests := []struct {
		name string
		f    DeliveryFilter
		want []uint64
	}{
		{"both", DeliveryFilter{}, []uint64{4, 3, 2, 1}},
		{"only test events", DeliveryFilter{Test: &yes}, []uint64{4, 2}},
		{"no test events", DeliveryFilter{Test: &no}, []uint64{3, 1}},
		{"with another filter", DeliveryFilter{Test: &yes, ReturnID: "r1"}, []uint64{2}},
		{"and a limit", DeliveryFilter{Test: &no, Limit: 1}, []uint64{3}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var seqs []uint64
			for _, d := range j.query(tc.f) {
				seqs = append(seqs, d.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tc.want) {
				t.Fatalf("seqs %v, want %v", seqs, tc.want)
			}
		})
	}
}

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
